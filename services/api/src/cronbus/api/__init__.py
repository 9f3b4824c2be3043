"""cronbus api: the REST API (Litestar) over the JOBS stream and the SQL history."""
