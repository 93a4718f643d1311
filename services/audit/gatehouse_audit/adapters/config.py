"""Audit's own configuration: the chain key, the checkpoint signing key, retention, purge.

| variable | default | meaning |
|---|---|---|
| ``GATEHOUSE_AUDIT_CHAIN_KEY`` | dev: generated into ``$DATA_DIR/keys/audit-chain.key`` | base64 of ≥ 32 random bytes: the HMAC key of the chains |
| ``GATEHOUSE_AUDIT_CHAIN_PREVIOUS_KEYS`` | — | comma-separated base64 keys used before a rotation (verify only) |
| ``GATEHOUSE_AUDIT_CHECKPOINT_KEY`` | dev: generated into ``$DATA_DIR/keys/audit-checkpoint.key`` | base64 of the 32-byte Ed25519 private key that signs checkpoints |
| ``GATEHOUSE_AUDIT_RETENTION_DAYS`` | ``365`` | retention of organizations without their own setting, and of the platform chain |
| ``GATEHOUSE_AUDIT_PURGE_INTERVAL`` | ``3600`` | seconds between purge runs |

Neither key is ever written to the database. In development (SQLite, no
variable set) each is generated once into the data directory with mode 0600;
with PostgreSQL both variables are required, so every replica uses the same keys.
"""

from __future__ import annotations

import base64
import binascii
import os
import pathlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gatehouse.kit.config import ConfigError, positive_number
from gatehouse_audit.domain.chain import MIN_KEY_BYTES, ChainKey, CheckpointSigner

CHAIN_KEY = "GATEHOUSE_AUDIT_CHAIN_KEY"
PREVIOUS_KEYS = "GATEHOUSE_AUDIT_CHAIN_PREVIOUS_KEYS"
CHECKPOINT_KEY = "GATEHOUSE_AUDIT_CHECKPOINT_KEY"
RETENTION_DAYS = "GATEHOUSE_AUDIT_RETENTION_DAYS"
PURGE_INTERVAL = "GATEHOUSE_AUDIT_PURGE_INTERVAL"


@dataclass(frozen=True)
class AuditConfig:
    chain_key: ChainKey
    signer: CheckpointSigner
    default_retention_days: int = 365
    purge_interval: float = 3600.0

    @classmethod
    def load(
        cls, data_dir: pathlib.Path, environ: Mapping[str, str] | None = None, *, require_keys: bool = False
    ) -> AuditConfig:
        """The configuration; ``require_keys`` (a shared PostgreSQL database: several replicas) refuses
        to generate keys, since replicas with keys of their own would break each other's chains."""
        env = os.environ if environ is None else environ
        if require_keys:
            for var in (CHAIN_KEY, CHECKPOINT_KEY):
                if not env.get(var):
                    raise ConfigError(
                        f"{var}: required with a PostgreSQL database (every replica must use the same key); "
                        "generated keys are for development on SQLite only"
                    )
        current = env.get(CHAIN_KEY) or _dev_secret(data_dir / "keys" / "audit-chain.key", MIN_KEY_BYTES)
        chain_key = _decode(CHAIN_KEY, current, MIN_KEY_BYTES)
        previous = [
            _decode(PREVIOUS_KEYS, item.strip(), MIN_KEY_BYTES)
            for item in (env.get(PREVIOUS_KEYS) or "").split(",")
            if item.strip()
        ]
        seed_text = env.get(CHECKPOINT_KEY) or _dev_secret(data_dir / "keys" / "audit-checkpoint.key", 32)
        seed = _decode(CHECKPOINT_KEY, seed_text, 32)
        if len(seed) != 32:
            raise ConfigError(f"{CHECKPOINT_KEY}: must be base64 of exactly 32 bytes (an Ed25519 seed)")
        return cls(
            chain_key=ChainKey(chain_key, previous),
            signer=CheckpointSigner(Ed25519PrivateKey.from_private_bytes(seed)),
            default_retention_days=positive_number(
                RETENTION_DAYS, env.get(RETENTION_DAYS) or "365", "days", int
            ),
            purge_interval=float(
                positive_number(PURGE_INTERVAL, env.get(PURGE_INTERVAL) or "3600", "seconds", int)
            ),
        )


def _decode(var: str, text: str, minimum: int) -> bytes:
    try:
        raw = base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise ConfigError(f"{var}: is not base64") from None
    if len(raw) < minimum:
        raise ConfigError(f"{var}: needs at least {minimum} bytes, got {len(raw)}")
    return raw


def _dev_secret(path: pathlib.Path, size: int) -> str:
    """The development secret in ``path`` (base64), generated with mode 0600 on first use."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = base64.b64encode(secrets.token_bytes(size)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process generated it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
    return path.read_text().strip()


def generate_keys_env() -> dict[str, str]:
    """Fresh key variables (for tests and benchmarks)."""
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {
        CHAIN_KEY: base64.b64encode(secrets.token_bytes(32)).decode(),
        CHECKPOINT_KEY: base64.b64encode(seed).decode(),
    }
