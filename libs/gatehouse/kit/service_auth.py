"""Service-to-service credentials: how one Gatehouse service authenticates to another.

Each service (and the gateway) has a service account in identity. Its client id
and secret reach the process either through ``GATEHOUSE_SERVICE_CLIENT_ID`` and
``GATEHOUSE_SERVICE_CLIENT_SECRET`` (production: a Kubernetes Secret) or through
``$GATEHOUSE_DATA_DIR/credentials/<service>.json`` (development: identity
provisions one account per service on its first start and writes these files,
mode 0600). :class:`ServiceTokenSource` exchanges them for a short-lived access
token through ``IdentityService/IssueServiceToken`` and refreshes it before it
expires; services pass it as the bearer token on their calls to authz and audit.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc

from gatehouse.kit import errors

CLIENT_ID_VAR = "GATEHOUSE_SERVICE_CLIENT_ID"
CLIENT_SECRET_VAR = "GATEHOUSE_SERVICE_CLIENT_SECRET"
# The services that get an account provisioned in development, one credentials file each.
PROVISIONED_SERVICES = ("identity", "tenancy", "authz", "audit", "gateway")


@dataclass(frozen=True)
class ServiceCredentials:
    client_id: str
    client_secret: str


def credentials_path(data_dir: pathlib.Path, service: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / "credentials" / f"{service}.json"


def write_credentials(data_dir: pathlib.Path, service: str, credentials: ServiceCredentials) -> pathlib.Path:
    """Write a credentials file readable only by its owner (atomically: never half-written)."""
    path = credentials_path(data_dir, service)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"client_id": credentials.client_id, "client_secret": credentials.client_secret}, f)
    os.replace(tmp, path)
    return path


def load_credentials(
    data_dir: pathlib.Path, service: str, environ: Mapping[str, str] | None = None
) -> ServiceCredentials | None:
    """Credentials from the environment, else from the data directory, else None."""
    env = os.environ if environ is None else environ
    if env.get(CLIENT_ID_VAR) and env.get(CLIENT_SECRET_VAR):
        return ServiceCredentials(env[CLIENT_ID_VAR], env[CLIENT_SECRET_VAR])
    path = credentials_path(data_dir, service)
    try:
        data = json.loads(path.read_text())
        return ServiceCredentials(data["client_id"], data["client_secret"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.Unavailable(f"unreadable service credentials in {path}: {exc}") from None


# Returns (access token, expiry as epoch seconds).
TokenFetch = Callable[[], Awaitable[tuple[str, float]]]


class ServiceTokenSource:
    """An async callable returning a valid service access token, refreshed ``margin`` s before expiry."""

    def __init__(self, fetch: TokenFetch, *, margin: float = 60.0):
        self._fetch = fetch
        self._margin = margin
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._token = None

    async def __call__(self) -> str:
        if self._token and time.time() < self._expires_at - self._margin:
            return self._token
        async with self._lock:
            if self._token and time.time() < self._expires_at - self._margin:
                return self._token
            token, expires_at = await self._fetch()
            self._token, self._expires_at = token, expires_at
            return token


def identity_token_fetch(
    channel: grpc.aio.Channel,
    credentials: Callable[[], ServiceCredentials | None],
    *,
    timeout: float = 5.0,
) -> TokenFetch:
    """Fetch a token with ``IssueServiceToken``; ``credentials`` is read on each fetch (files may appear late)."""
    from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc

    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def fetch() -> tuple[str, float]:
        creds = credentials()
        if creds is None:
            raise errors.Unavailable("no service credentials configured", dependency="identity")
        try:
            answer = await stub.IssueServiceToken(
                identity_service_pb2.IssueServiceTokenRequest(
                    client_id=creds.client_id, client_secret=creds.client_secret
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise errors.Unavailable(
                f"could not obtain a service token from identity ({exc.code().name})", dependency="identity"
            ) from exc
        return answer.access_token, answer.access_token_expire_time.ToSeconds()

    return fetch
