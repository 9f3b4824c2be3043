"""The `cronbus` command-line client: a thin client of the REST API (`cronbus jobs ls`, ...)."""
