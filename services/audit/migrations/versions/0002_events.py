"""audit: events with their per-organization hash chain, chain heads, retention settings.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from gatehouse_audit.adapters.tables import (
    EVENT_INDEXES,
    chain_columns,
    event_columns,
    retention_columns,
)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("audit_events", *event_columns())
    for name, columns, unique in EVENT_INDEXES:
        op.create_index(name, "audit_events", columns, unique=unique)
    op.create_table("audit_chains", *chain_columns())
    op.create_table("audit_retention", *retention_columns())


def downgrade() -> None:
    op.drop_table("audit_retention")
    op.drop_table("audit_chains")
    op.drop_table("audit_events")
