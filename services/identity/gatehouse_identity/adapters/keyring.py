"""Key material: the key-encryption key (KEK), the cipher for secrets at rest, and signing keys.

- The KEK comes from ``GATEHOUSE_IDENTITY_KEK``; without it (development) a
  random one is generated into ``$DATA_DIR/keys/identity.kek`` (mode 0600) on
  first start and read from there afterwards.
- Private signing keys are stored as PKCS#8 PEM encrypted with the KEK
  (cryptography's ``BestAvailableEncryption``); TOTP secrets and other secrets
  kept for idempotent retries are encrypted with Fernet under a key derived
  from the KEK (HKDF-SHA256).
- :class:`Keyring` holds the signing keys in memory, refreshed from the
  database every few seconds so replicas follow a rotation. A new key is
  published in the JWKS at once but signs only after ``activation_delay``
  (verifiers learn it before they meet it); every key not yet past its
  ``retire_at`` stays published.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import time

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gatehouse.kit import keys as jwtkeys
from gatehouse.kit.db import Database
from gatehouse_identity.adapters.tables import signing_keys
from gatehouse_identity.domain.model import IssuedToken

KEK_FILE = pathlib.Path("keys") / "identity.kek"


def load_kek(configured: str | None, data_dir: pathlib.Path) -> bytes:
    """The configured KEK, else the development one in the data directory (created 0600 if missing)."""
    if configured:
        return configured.encode()
    path = pathlib.Path(data_dir) / KEK_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it just now
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    value = path.read_text().strip()
    if len(value) < 32:
        raise ValueError(f"{path}: key-encryption key is too short")
    return value.encode()


def _derive(kek: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(kek)


class SecretBox:
    """Fernet (AES-128-CBC + HMAC) and a keyed hash, under keys derived from the KEK."""

    def __init__(self, kek: bytes):
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(kek, b"gatehouse-identity-secrets")))
        self._mac_key = _derive(kek, b"gatehouse-identity-mac")

    def mac(self, value: str) -> str:
        """HMAC-SHA256 hex: for low-entropy values (recovery codes, emails) a database leak must not reveal."""
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with the configured key-encryption key") from None


class Keyring:
    """Signing keys from the database; signs with the newest one."""

    def __init__(
        self,
        db: Database,
        kek: bytes,
        *,
        issuer: str,
        audience: str,
        refresh_interval: float = 5.0,
        activation_delay: float = 0.0,
    ):
        self.db = db
        self._kek = kek
        self.issuer = issuer
        self.audience = audience
        self._refresh_interval = refresh_interval
        self._activation_delay = activation_delay
        self._keys: list[tuple[jwtkeys.SigningKey, dict, float, float | None]] = []
        self._loaded_at = float("-inf")

    # ---- storage -----------------------------------------------------------
    async def insert_key(self, session) -> jwtkeys.SigningKey:
        """Create a key in ``session``'s transaction (the caller commits)."""
        key = jwtkeys.generate_signing_key()
        await session.execute(
            signing_keys.insert().values(
                kid=key.kid,
                private_pem_encrypted=jwtkeys.private_key_to_pem(key, self._kek),
                public_jwk=json.dumps(jwtkeys.public_jwk(key)),
                created_at=time.time(),
                retire_at=None,
            )
        )
        return key

    async def rotate(self, session, retire_after: float) -> jwtkeys.SigningKey:
        """A new current key; every older unretired key retires ``retire_after`` seconds from now."""
        await session.execute(
            signing_keys.update()
            .where(signing_keys.c.retire_at.is_(None))
            .values(retire_at=time.time() + retire_after)
        )
        return await self.insert_key(session)

    async def load(self) -> None:
        """Read the published keys (creating the first one on an empty database)."""
        now = time.time()
        async with self.db.unit_of_work() as uow:
            rows = (
                await uow.session.execute(
                    sa.select(signing_keys)
                    .where(sa.or_(signing_keys.c.retire_at.is_(None), signing_keys.c.retire_at > now))
                    .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid)
                )
            ).all()
            if not rows:
                await self.insert_key(uow.session)
                await uow.commit()
                return await self.load()
        try:
            keys = [
                (
                    jwtkeys.private_key_from_pem(r.kid, r.private_pem_encrypted, self._kek),
                    json.loads(r.public_jwk),
                    r.created_at,
                    r.retire_at,
                )
                for r in rows
            ]
        except (ValueError, TypeError) as exc:
            raise RuntimeError(
                "the signing keys cannot be decrypted with this key-encryption key "
                "(GATEHOUSE_IDENTITY_KEK or $DATA_DIR/keys/identity.kek changed?)"
            ) from exc
        self._keys = keys
        self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at > self._refresh_interval or not self._keys:
            await self.load()

    # ---- use -----------------------------------------------------------------
    async def current(self) -> jwtkeys.SigningKey:
        """The newest key published for at least the activation delay (else the oldest published)."""
        await self._fresh()
        ready = time.time() - self._activation_delay
        for key, _, created_at, _ in self._keys:
            if created_at <= ready:
                return key
        return self._keys[-1][0]

    async def jwks(self) -> list[dict]:
        """Every key that may have signed a still-valid token, the current one first."""
        await self._fresh()
        now = time.time()
        return [jwk for _, jwk, _, retire_at in self._keys if retire_at is None or retire_at > now]

    async def issue(
        self,
        *,
        subject: str,
        principal_type: str,
        ttl: int,
        session_id: str | None = None,
        amr: tuple[str, ...] = (),
        extra: dict | None = None,
    ) -> IssuedToken:
        key = await self.current()
        now = int(time.time())
        token = jwtkeys.issue_token(
            key,
            issuer=self.issuer,
            audience=self.audience,
            subject=subject,
            principal_type=principal_type,
            session_id=session_id,
            amr=amr,
            ttl_seconds=ttl,
            now=now,
            extra=extra,
        )
        return IssuedToken(token, float(now + ttl))
