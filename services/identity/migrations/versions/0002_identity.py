"""identity: users, sessions, refresh tokens, revocations, throttle, TOTP, keys, service accounts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = (
    "idempotency",
    "service_accounts",
    "signing_keys",
    "reset_tokens",
    "recovery_codes",
    "totp",
    "login_throttle",
    "identity_meta",
    "revocations",
    "refresh_tokens",
    "sessions",
    "users",
)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("mfa_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amr", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_refresh_at", sa.Float, nullable=True),
        sa.Column("expire_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoke_reason", sa.String(64), nullable=True),
        sa.Column("source_address", sa.String(200), nullable=False, server_default=""),
        sa.Column("user_agent", sa.String(500), nullable=False, server_default=""),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id", "id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_refresh_tokens_session", "refresh_tokens", ["session_id"])
    op.create_table(
        "revocations",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=False),
        sa.Column("expire_at", sa.Float, nullable=False),
    )
    op.create_table(
        "identity_meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revocation_sequence", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "login_throttle",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=True),
    )
    op.create_table(
        "totp",
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("secret_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("confirmed", sa.Boolean, nullable=False),
        sa.Column("last_used_step", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_recovery_codes_user", "recovery_codes", ["user_id"])
    op.create_table(
        "reset_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expire_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("private_pem_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("public_jwk", sa.String(None), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("retire_at", sa.Float, nullable=True),
    )
    op.create_table(
        "service_accounts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("client_id", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "idempotency",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("result", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "identity_meta", sa.column("id", sa.Integer), sa.column("revocation_sequence", sa.BigInteger)
        ),
        [{"id": 1, "revocation_sequence": 0}],
    )


def downgrade() -> None:
    for name in TABLES:
        op.drop_table(name)
