"""Initial history schema: jobs, runs, attempts, log chunks, projector positions, api keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from cronbus.shared.history.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_jobs_name", "jobs", ["name"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("slot", UTCDateTime, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("runner", sa.String(200)),
        sa.Column("dispatched_at", UTCDateTime),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("exit_code", sa.Integer),
        sa.Column("duration_ms", sa.Float),
        sa.Column("lateness_ms", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("cpu_ms", sa.Float),
        sa.Column("peak_rss_bytes", sa.BigInteger),
        sa.Column("output_bytes", sa.BigInteger, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
    )
    op.create_index("ix_runs_job_id_slot", "runs", ["job_id", "slot"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_attempts",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("runner", sa.String(200)),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("exit_code", sa.Integer),
        sa.Column("duration_ms", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "log_chunks",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "projector_positions",
        sa.Column("consumer", sa.String(64), primary_key=True),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
    )


def downgrade() -> None:
    for table in ("api_keys", "projector_positions", "log_chunks", "run_attempts", "runs", "jobs"):
        op.drop_table(table)
