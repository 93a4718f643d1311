"""tenancy: organizations, members, workspaces, groups, invitations, preferences, idempotency.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from gatehouse_tenancy.adapters.tables import DOMAIN_TABLES, metadata

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The initial schema of these tables is their definition in tables.py; later
    # changes get their own explicit migrations.
    metadata.create_all(op.get_bind(), tables=list(DOMAIN_TABLES))


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), tables=list(DOMAIN_TABLES))
