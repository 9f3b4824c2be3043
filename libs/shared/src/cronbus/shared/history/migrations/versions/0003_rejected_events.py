"""Events a projector set aside or cleaned before applying them, for operators.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from cronbus.shared.history.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejected_events",
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("sanitized", sa.Boolean, nullable=False),
        sa.Column("rejected_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("stream", "stream_seq", name="pk_rejected_events"),
    )
    op.create_index("ix_rejected_events_rejected_at", "rejected_events", ["rejected_at"])


def downgrade() -> None:
    op.drop_index("ix_rejected_events_rejected_at", "rejected_events")
    op.drop_table("rejected_events")
