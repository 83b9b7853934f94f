"""dynamic batching settings per model

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_batch_size", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("max_queue_delay_ms", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("max_queue_delay_ms")
        batch_op.drop_column("max_batch_size")
