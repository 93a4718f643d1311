"""SQLAlchemy tables of the tenancy service (its own database only).

Tenancy keeps the entities and the facts its business rules need (who is the
owner, who is a member with which role and status); authz holds the resulting
relationships and is the only place access is decided.
"""

import sqlalchemy as sa

from gatehouse.kit.outbox import outbox_table

metadata = sa.MetaData()
outbox = outbox_table(metadata)

ID = sa.String(36)

setup_state = sa.Table(
    "setup_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("admin_user_id", ID, nullable=False),
    sa.Column("organization_id", ID, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("name_key", sa.String(200), nullable=False, unique=True),
    sa.Column("slug", sa.String(63), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner_user_id", ID, nullable=False),
    sa.Column("require_mfa", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("invitation_ttl_seconds", sa.Integer, nullable=False),
    sa.Column("deletion_retention_days", sa.Integer, nullable=False),
    sa.Column("audit_retention_days", sa.Integer, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("update_time", sa.Float, nullable=False),
    sa.Column("delete_time", sa.Float, nullable=True),
    sa.Column("purge_time", sa.Float, nullable=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    # Bumped as the first statement of every change inside the organization: it
    # serializes concurrent changes of one organization on both databases.
    sa.Column("lock_seq", sa.BigInteger, nullable=False, server_default="0"),
)

org_members = sa.Table(
    "org_members",
    metadata,
    sa.Column("organization_id", ID, primary_key=True),
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Index("ix_org_members_user", "user_id"),
)

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("organization_id", ID, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("name_key", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner_user_id", ID, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("update_time", sa.Float, nullable=False),
    sa.Column("delete_time", sa.Float, nullable=True),
    sa.Column("purge_time", sa.Float, nullable=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Index("ix_workspaces_org", "organization_id", "id"),
)

workspace_members = sa.Table(
    "workspace_members",
    metadata,
    sa.Column("workspace_id", ID, primary_key=True),
    sa.Column("principal_type", sa.String(16), primary_key=True),
    sa.Column("principal_id", ID, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Index("ix_workspace_members_principal", "principal_type", "principal_id"),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("organization_id", ID, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("name_key", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("update_time", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.UniqueConstraint("organization_id", "name_key", name="uq_groups_org_name"),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("group_id", ID, primary_key=True),
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Index("ix_group_members_user", "user_id"),
)

invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("organization_id", ID, nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("workspace_roles", sa.Text, nullable=False, server_default="[]"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("expire_time", sa.Float, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("inviter_user_id", ID, nullable=False),
    sa.Column("accepted_user_id", ID, nullable=True),
    sa.Index("ix_invitations_org", "organization_id", "id"),
)

preferences = sa.Table(
    "preferences",
    metadata,
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("current_workspace_id", ID, nullable=True),
    sa.Column("update_time", sa.Float, nullable=False),
)

# Idempotency of creates and changes: (method, caller, request_id) → the id of the result.
requests = sa.Table(
    "requests",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("result_id", sa.String(200), nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
)

DOMAIN_TABLES = (
    setup_state,
    organizations,
    org_members,
    workspaces,
    workspace_members,
    groups,
    group_members,
    invitations,
    preferences,
    requests,
)
