"""The audit log: who changed what (job events and the AUDIT stream, projected by logs).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from cronbus.shared.history.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("revision", sa.Integer, nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_at_id", "audit", ["at", "id"])
    op.create_index("ix_audit_job_id_at", "audit", ["job_id", "at"])
    op.create_index("ix_audit_actor_at", "audit", ["actor", "at"])
    op.create_index("ix_audit_action_at", "audit", ["action", "at"])


def downgrade() -> None:
    for name in ("ix_audit_action_at", "ix_audit_actor_at", "ix_audit_job_id_at", "ix_audit_at_id"):
        op.drop_index(name, "audit")
    op.drop_table("audit")
