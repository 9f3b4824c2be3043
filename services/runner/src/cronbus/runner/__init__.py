"""cronbus runner: pulls dispatched runs for its pools, executes them, and reports their lifecycle."""
