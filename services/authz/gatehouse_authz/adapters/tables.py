"""SQLAlchemy tables of the authz service (its own database only).

``relationships`` and ``states`` are the current state; ``changelog`` holds
every write by revision (what replicas follow); ``authz_meta`` holds the
revision counter, whose row lock serializes writers so that revisions commit in
order; ``write_requests`` makes writes idempotent by request id.
"""

import sqlalchemy as sa

from gatehouse.kit.outbox import outbox_table

metadata = sa.MetaData()
outbox = outbox_table(metadata)

relationships = sa.Table(
    "relationships",
    metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("resource_id", sa.String(128), primary_key=True),
    sa.Column("relation", sa.String(64), primary_key=True),
    sa.Column("subject_type", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(128), primary_key=True),
    sa.Column("capability", sa.String(128), primary_key=True, server_default=""),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Index("ix_relationships_subject", "subject_type", "subject_id"),
)

states = sa.Table(
    "states",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("value", sa.String(32), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

changelog = sa.Table(
    "changelog",
    metadata,
    sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("changes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

meta = sa.Table(
    "authz_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

write_requests = sa.Table(
    "write_requests",
    metadata,
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
