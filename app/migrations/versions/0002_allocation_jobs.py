"""allocation, telemetry, scheduling policy and chunked jobs

Revision ID: 0002
Revises: 0001

Existing rows get defaults: speed 1.0, keep_warm false, min_replicas 0, pinned [].
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "allocation_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("solver", sa.String(length=40), nullable=False),
        sa.Column("solver_status", sa.String(length=40), nullable=False),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("bound", sa.Float(), nullable=True),
        sa.Column("gap", sa.Float(), nullable=True),
        sa.Column("solve_s", sa.Float(), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("moves", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("request_class", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("total_chunks", sa.Integer(), nullable=False),
        sa.Column("chunk_service_s", sa.Float(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_model"), ["model"], unique=False)

    op.create_table(
        "job_chunk",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "index"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("speed", sa.Float(), nullable=False, server_default="1.0"))
        batch_op.add_column(sa.Column("mem_used_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("util_pct", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cpu_pct", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rss_bytes", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("max_queue", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("keep_warm", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("min_replicas", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("max_replicas", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("pinned", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("pinned")
        batch_op.drop_column("max_replicas")
        batch_op.drop_column("min_replicas")
        batch_op.drop_column("keep_warm")
        batch_op.drop_column("max_queue")
        batch_op.drop_column("policy")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("rss_bytes")
        batch_op.drop_column("cpu_pct")
        batch_op.drop_column("util_pct")
        batch_op.drop_column("mem_used_bytes")
        batch_op.drop_column("speed")

    op.drop_table("job_chunk")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_model"))

    op.drop_table("job")
    op.drop_table("allocation_run")
