"""who asked for each lifecycle event: replica.requested_by and replica_event.requested_by

Revision ID: 0006
Revises: 0005

Existing rows get "" (not recorded before this revision).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("replica", "replica_event"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("requested_by", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    for table in ("replica_event", "replica"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("requested_by")
