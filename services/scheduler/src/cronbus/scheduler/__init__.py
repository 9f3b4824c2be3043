"""cronbus scheduler: keeps schedules, holds the primacy lease, dispatches each slot once."""
