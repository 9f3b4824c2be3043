"""Bytes of stored output per run, for retention's byte budgets; filled from existing output.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "output_sizes",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    # length() of a BLOB (SQLite) or bytea (PostgreSQL) is its size in bytes.
    op.execute(
        "INSERT INTO output_sizes (run_id, bytes) "
        "SELECT run_id, SUM(LENGTH(data)) FROM log_chunks GROUP BY run_id"
    )


def downgrade() -> None:
    op.drop_table("output_sizes")
