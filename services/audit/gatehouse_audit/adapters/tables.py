"""SQLAlchemy tables of the audit service (its own database only)."""

import sqlalchemy as sa

from gatehouse.kit.outbox import outbox_table

metadata = sa.MetaData()
outbox = outbox_table(metadata)


def event_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("occur_us", sa.BigInteger, nullable=False),
        sa.Column("ingest_us", sa.BigInteger, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("actor_type", sa.String(32), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("actor_display", sa.Text, nullable=False),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("source_address", sa.String(200), nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
    ]


def chain_columns() -> list[sa.Column]:
    return [
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("head_sequence", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.LargeBinary, nullable=False),
        sa.Column("anchor_sequence", sa.BigInteger, nullable=False),
        sa.Column("anchor_hash", sa.LargeBinary, nullable=False),
        sa.Column("anchor_mac", sa.LargeBinary, nullable=False),
    ]


def retention_columns() -> list[sa.Column]:
    return [
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("retention_days", sa.Integer, nullable=False),
        sa.Column("source_event_id", sa.String(64), nullable=False),
    ]


# (name, columns, unique) of every index on audit_events; the migration creates the same.
EVENT_INDEXES = [
    ("uq_audit_events_chain", ["organization_id", "sequence"], True),
    ("ix_audit_events_org_time", ["organization_id", "occur_us", "id"], False),
    ("ix_audit_events_ws_time", ["workspace_id", "occur_us", "id"], False),
    ("ix_audit_events_actor_time", ["actor_id", "occur_us", "id"], False),
    ("ix_audit_events_time", ["occur_us", "id"], False),
]

events = sa.Table("audit_events", metadata, *event_columns())
for _name, _cols, _unique in EVENT_INDEXES:
    sa.Index(_name, *[events.c[c] for c in _cols], unique=_unique)
chains = sa.Table("audit_chains", metadata, *chain_columns())
retention = sa.Table("audit_retention", metadata, *retention_columns())
