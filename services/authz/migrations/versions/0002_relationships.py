"""authz: relationships, states, change log, revision counter, idempotent writes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relationships",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(128), primary_key=True),
        sa.Column("relation", sa.String(64), primary_key=True),
        sa.Column("subject_type", sa.String(64), primary_key=True),
        sa.Column("subject_id", sa.String(128), primary_key=True),
        sa.Column("capability", sa.String(128), primary_key=True, server_default=""),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_relationships_subject", "relationships", ["subject_type", "subject_id"])
    op.create_table(
        "states",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("value", sa.String(32), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "changelog",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("changes", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    meta = op.create_table(
        "authz_meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(meta, [{"id": 1, "revision": 0}])
    op.create_table(
        "write_requests",
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("write_requests", "authz_meta", "changelog", "states", "relationships"):
        op.drop_table(table)
