"""Identity's own settings (beyond the shared ``gatehouse.kit.config.Settings``).

All are environment variables, prefixed ``GATEHOUSE_IDENTITY_``:

| variable | default | meaning |
|---|---|---|
| ``KEK`` | — | key-encryption key (any string of 32+ characters) for private signing keys and TOTP secrets; without it a development key is generated into ``$DATA_DIR/keys/identity.kek`` (0600) |
| ``ARGON2_TIME_COST`` | 3 | argon2id iterations |
| ``ARGON2_MEMORY_KIB`` | 65536 | argon2id memory (KiB) |
| ``ARGON2_PARALLELISM`` | 4 | argon2id lanes |
| ``ACCESS_TOKEN_TTL`` | 900 | access-token lifetime (s) |
| ``SERVICE_TOKEN_TTL`` | 900 | service-token lifetime (s) |
| ``REFRESH_TOKEN_TTL`` | 2592000 | session / refresh-token lifetime (s, 30 days) |
| ``LOCKOUT_THRESHOLD`` | 5 | failed logins within the window that lock an account |
| ``LOCKOUT_WINDOW`` | 900 | the window (s) |
| ``LOCKOUT_DURATION`` | 900 | how long a lock lasts (s) |
| ``KEY_RETIRE_GRACE`` | 60 | seconds an old signing key stays published after its last token expired |
| ``KEY_ACTIVATION_DELAY`` | 10 | a rotated key is published at once but signs only this many seconds later, so verifiers (which refetch keys on an unknown ``kid`` at most every 5 s) know it before they see it |
| ``TOKEN_LEEWAY`` | 60 | clock-skew margin added to token lifetimes when publishing revocations and retiring keys |
| ``PROVISION_SERVICE_ACCOUNTS`` | true | create one service account per service and write ``$DATA_DIR/credentials/<svc>.json`` on start |

The argon2 defaults are argon2-cffi's (RFC 9106 "low memory" profile); tests use
cheap parameters (``IdentityConfig.for_tests``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from gatehouse.kit.config import ConfigError, positive_number

PREFIX = "GATEHOUSE_IDENTITY_"


@dataclass(frozen=True)
class IdentityConfig:
    kek: str | None = None
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    access_token_ttl: int = 900
    service_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    lockout_threshold: int = 5
    lockout_window: float = 900.0
    lockout_duration: float = 900.0
    key_retire_grace: float = 60.0
    token_leeway: float = 60.0
    key_activation_delay: float = 10.0
    reset_token_ttl: float = 3600.0
    provision_service_accounts: bool = True
    key_refresh_interval: float = 5.0
    revocation_poll_interval: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IdentityConfig:
        env = os.environ if environ is None else environ
        base = cls()
        values: dict = {}
        for name, default in base.__dict__.items():
            raw = env.get(PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            var = PREFIX + name.upper()
            if isinstance(default, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ConfigError(f"{var}: {raw!r} is not a boolean")
                values[name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int | float):
                values[name] = positive_number(var, raw, "", type(default))
            else:
                if len(raw) < 32:
                    raise ConfigError(f"{var}: must be at least 32 characters")
                values[name] = raw
        return replace(base, **values)

    @classmethod
    def for_tests(cls, **overrides) -> IdentityConfig:
        """Cheap argon2id (t=1, m=1 MiB, p=1) so tests stay fast; never use in production."""
        values = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
        values.update(overrides)
        return cls(**values)
