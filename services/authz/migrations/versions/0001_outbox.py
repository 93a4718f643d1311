"""authz: the transactional outbox.

Revision ID: 0001
Revises:
"""

from alembic import op

from gatehouse.kit.outbox import create_outbox_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)


def downgrade() -> None:
    op.drop_table("outbox")
