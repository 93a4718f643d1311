"""Configuration from environment variables, all prefixed ``GATEHOUSE_``.

Every variable is documented in README.md ("Configuration"). Invalid values fail
at start with a :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "GATEHOUSE_"
SERVICES = ("identity", "tenancy", "authz", "audit")
DEFAULT_ADDRESSES = {
    "identity": "127.0.0.1:50051",
    "tenancy": "127.0.0.1:50052",
    "authz": "127.0.0.1:50053",
    "audit": "127.0.0.1:50054",
    "gateway": "127.0.0.1:8080",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OTEL_EXPORTERS = ("none", "console", "otlp", "memory")
# The asyncio event loop a service runs on: uvloop (the default: the same asyncio API, a cheaper
# loop under every RPC) or the standard library's.
EVENT_LOOPS = ("uvloop", "asyncio")
_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class ConfigError(ValueError):
    """A configuration variable is invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    service: str
    listen_address: str
    database_url: str
    data_dir: pathlib.Path
    log_level: str
    addresses: Mapping[str, str]
    otel_exporter: str
    otel_endpoint: str
    token_issuer: str
    token_audience: str
    authz_timeout: float
    shutdown_grace: float
    log_format: str = "json"
    event_loop: str = "uvloop"

    def address_of(self, service: str) -> str:
        return self.addresses[service]

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        if service not in (*SERVICES, "gateway"):
            raise ConfigError(f"unknown service {service!r}")

        def get(name: str, default: str) -> str:
            value = env.get(PREFIX + name)
            return default if value is None or value == "" else value

        data_dir = pathlib.Path(get("DATA_DIR", ".gatehouse")).expanduser().resolve()
        addresses = {}
        for svc, default in DEFAULT_ADDRESSES.items():
            var = f"{svc.upper()}_ADDRESS"
            addresses[svc] = _address(PREFIX + var, get(var, default))
        listen = _address(PREFIX + "LISTEN_ADDRESS", get("LISTEN_ADDRESS", addresses[service]))

        default_db = f"sqlite+aiosqlite:///{data_dir / (service + '.db')}"
        db_var = f"{service.upper()}_DATABASE_URL"
        if env.get(PREFIX + db_var):
            database_url = _database_url(PREFIX + db_var, env[PREFIX + db_var])
        else:
            database_url = _database_url(PREFIX + "DATABASE_URL", get("DATABASE_URL", default_db))

        log_level = get("LOG_LEVEL", "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(f"{PREFIX}LOG_LEVEL: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        log_format = get("LOG_FORMAT", "json").lower()
        if log_format not in ("json", "text"):
            raise ConfigError(f"{PREFIX}LOG_FORMAT: {log_format!r} is not one of json, text")
        exporter = get("OTEL_EXPORTER", "none").lower()
        if exporter not in OTEL_EXPORTERS:
            raise ConfigError(
                f"{PREFIX}OTEL_EXPORTER: {exporter!r} is not one of {', '.join(OTEL_EXPORTERS)}"
            )
        event_loop = get("EVENT_LOOP", "uvloop").lower()
        if event_loop not in EVENT_LOOPS:
            raise ConfigError(f"{PREFIX}EVENT_LOOP: {event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")
        return cls(
            service=service,
            listen_address=listen,
            database_url=database_url,
            data_dir=data_dir,
            log_level=log_level,
            log_format=log_format,
            addresses=addresses,
            otel_exporter=exporter,
            otel_endpoint=get("OTEL_ENDPOINT", "http://127.0.0.1:4317"),
            token_issuer=get("TOKEN_ISSUER", "gatehouse"),
            token_audience=get("TOKEN_AUDIENCE", "gatehouse"),
            authz_timeout=_seconds(PREFIX + "AUTHZ_TIMEOUT", get("AUTHZ_TIMEOUT", "0.5")),
            shutdown_grace=_seconds(PREFIX + "SHUTDOWN_GRACE", get("SHUTDOWN_GRACE", "5")),
            event_loop=event_loop,
        )


def _address(var: str, value: str) -> str:
    m = _ADDRESS.match(value)
    if not m or not 0 <= int(m.group("port")) <= 65535:
        raise ConfigError(f"{var}: {value!r} is not a host:port address (e.g. 127.0.0.1:50051)")
    return value


def _database_url(var: str, value: str) -> str:
    if value.startswith("postgresql://") or value.startswith("postgres://"):
        value = "postgresql+psycopg://" + value.split("://", 1)[1]
    if value.startswith("sqlite:///"):
        value = "sqlite+aiosqlite:///" + value[len("sqlite:///") :]
    if not (value.startswith("sqlite+aiosqlite:///") or value.startswith("postgresql+psycopg://")):
        raise ConfigError(
            f"{var}: {value!r} must start with sqlite+aiosqlite:/// or postgresql+psycopg:// "
            "(postgresql:// is accepted too)"
        )
    return value


def positive_number(var: str, value: str, unit: str = "seconds", kind: type = float):
    """``value`` (of variable ``var``) as a finite ``kind`` (float, or int for a whole number)
    greater than 0; ConfigError naming ``var`` (``unit``, if any, says what the number counts).
    NaN and infinity are refused: neither is a duration or a size."""
    try:
        number = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{var}: {value!r} is not {what}{f' of {unit}' if unit else ''}") from None
    if not 0 < number < float("inf"):
        raise ConfigError(f"{var}: must be a finite number greater than 0, got {value!r}")
    return number


def _seconds(var: str, value: str) -> float:
    return positive_number(var, value)
