"""notes: the notes table and the transactional outbox for audit events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from gatehouse.kit.outbox import create_outbox_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)
    op.create_table(
        "notes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workspace_id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("creator_id", sa.String(128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(200), nullable=True, unique=True),
    )
    op.create_index("ix_notes_workspace", "notes", ["workspace_id", "id"])


def downgrade() -> None:
    op.drop_table("notes")
    op.drop_table("outbox")
