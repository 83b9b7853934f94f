"""per-model request and result size limits (null: the fleet's MAAS_MAX_REQUEST_BYTES / MAAS_MAX_RESULT_BYTES)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_request_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("max_result_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_column("max_result_bytes")
        batch_op.drop_column("max_request_bytes")
