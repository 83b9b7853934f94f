"""replica KV cache: the bytes a generative replica's KV cache may grow to, part of its footprint

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kv_cache_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.drop_column("kv_cache_bytes")
