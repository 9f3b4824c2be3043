"""The SQL history both `logs` (writes) and `api` (reads) use: schema, engine, migrations.

Needs the `sql` extra (`cronbus-shared[sql]`); the scheduler and runner never import it.
"""
