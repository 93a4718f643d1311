"""SQLAlchemy tables of the identity service (its own database only).

Secrets are never stored in clear: passwords as argon2id hashes, refresh
tokens, client secrets, reset tokens and recovery codes as SHA-256 digests
(they are 128+ bit random values, so a fast hash is enough), TOTP secrets and
signing keys encrypted with the key-encryption key.
"""

import sqlalchemy as sa

from gatehouse.kit.outbox import outbox_table

metadata = sa.MetaData()
outbox = outbox_table(metadata)

users = sa.Table(
    "users",
    metadata,
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

sessions = sa.Table(
    "sessions",
    metadata,
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
    sa.Index("ix_sessions_user", "user_id", "id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
    sa.Index("ix_refresh_tokens_session", "session_id"),
)

# Published revocations; ``sequence`` comes from identity_meta (row lock → commit order).
revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("session_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=False),
    sa.Column("expire_at", sa.Float, nullable=False),
)

meta = sa.Table(
    "identity_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revocation_sequence", sa.BigInteger, nullable=False),
)

# Failed-login throttle per normalized email (also for unknown emails: no enumeration).
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=True),
)

totp = sa.Table(
    "totp",
    metadata,
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("secret_encrypted", sa.LargeBinary, nullable=False),
    sa.Column("confirmed", sa.Boolean, nullable=False),
    sa.Column("last_used_step", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
)

recovery_codes = sa.Table(
    "recovery_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
    sa.Index("ix_recovery_codes_user", "user_id"),
)

reset_tokens = sa.Table(
    "reset_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expire_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_pem_encrypted", sa.LargeBinary, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Set when a newer key became current: after this time no token it signed can be valid.
    sa.Column("retire_at", sa.Float, nullable=True),
)

service_accounts = sa.Table(
    "service_accounts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("client_id", sa.String(64), nullable=False, unique=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Idempotency: the first answer of a create/mutation, by caller + method + request id.
idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("result", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
