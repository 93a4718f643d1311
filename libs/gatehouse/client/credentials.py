"""Where the client's bearer token comes from.

Every credentials object is an async callable returning the current access
token (the shape of :class:`gatehouse.kit.service_auth.ServiceTokenSource`), so
it plugs into :class:`~gatehouse.client.channels.BearerInterceptor` and into the
kit's guards alike.

- :class:`StaticToken` — a token you already have (tests, scripts).
- :class:`SessionCredentials` — an end user: ``Login`` with email and password
  (and TOTP code), then ``RefreshSession`` *before* the access token expires
  (when less than ``refresh_margin`` seconds — at most half the token's
  lifetime — are left). The refresh token rotates on every use and is never
  replayed; if it was revoked and the password is still held, the session logs
  in again. A failed refresh while the current token is still valid keeps using it.
- :class:`ServiceAccountCredentials` — a backend: ``IssueServiceToken`` with a
  client id and secret, refreshed a minute before expiry (the kit's
  ``ServiceTokenSource``).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable

import grpc

from gatehouse.kit import errors
from gatehouse.kit.service_auth import (
    ServiceCredentials,
    ServiceTokenSource,
    identity_token_fetch,
    load_credentials,
)


class StaticToken:
    """A fixed bearer token."""

    def __init__(self, token: str):
        self.token = token

    async def __call__(self) -> str:
        return self.token


class SessionCredentials:
    """An end user's session: login, then refresh before expiry."""

    def __init__(
        self,
        identity_stub,
        *,
        email: str,
        password: str | None,
        totp_code: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self._stub = identity_stub
        self._email = email
        self._password = password
        self._totp_code = totp_code
        self._margin = refresh_margin
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.session_id: str | None = None
        self.user = None
        self.expires_at = 0.0
        self._lifetime = 0.0
        self.refreshes = 0

    def _adopt(self, answer) -> None:
        now = self._clock()
        self.access_token = answer.access_token
        self.refresh_token = answer.refresh_token
        self.session_id = answer.session_id
        self.expires_at = answer.access_token_expire_time.ToSeconds()
        self._lifetime = max(self.expires_at - now, 0.0)

    async def login(self):
        """``Login``; raises the server's error (UNAUTHENTICATED, MFA_REQUIRED, …) as AioRpcError."""
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        if self._password is None:
            raise errors.Unauthenticated("the session ended and no password is held to log in again")
        answer = await self._stub.Login(
            pb.LoginRequest(email=self._email, password=self._password, totp_code=self._totp_code),
            timeout=self._timeout,
        )
        self._adopt(answer)
        self.user = answer.user
        return answer

    def _fresh(self) -> bool:
        margin = min(self._margin, self._lifetime / 2)
        return bool(self.access_token) and self._clock() < self.expires_at - margin

    def invalidate(self) -> None:
        """The access token was refused: the next call refreshes (or logs in) first."""
        self.expires_at = 0.0

    async def refresh(self) -> None:
        """``RefreshSession`` now (the refresh token is used up and replaced)."""
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        answer = await self._stub.RefreshSession(
            pb.RefreshSessionRequest(refresh_token=self.refresh_token), timeout=self._timeout
        )
        self._adopt(answer)
        self.refreshes += 1

    async def __call__(self) -> str:
        if self._fresh():
            return self.access_token
        async with self._lock:
            if self._fresh():
                return self.access_token
            if not self.refresh_token:
                await self.login()
                return self.access_token
            try:
                await self.refresh()
            except grpc.aio.AioRpcError as exc:
                still_valid = bool(self.access_token) and self._clock() < self.expires_at
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.refresh_token = None
                    if self._password is None:
                        raise errors.Unauthenticated("the session expired or was revoked") from exc
                    await self.login()
                elif not still_valid:
                    raise errors.Unavailable(
                        f"could not refresh the session ({exc.code().name})", dependency="identity"
                    ) from exc
            return self.access_token

    async def logout(self) -> None:
        """End the session (``Logout`` with the refresh token) and forget the tokens."""
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        if self.refresh_token:
            await self._stub.Logout(pb.LogoutRequest(refresh_token=self.refresh_token), timeout=self._timeout)
        self.access_token = self.refresh_token = None
        self._password = None


class ServiceAccountCredentials:
    """A backend's service account: ``IssueServiceToken``, refreshed before expiry."""

    def __init__(
        self,
        identity_channel: grpc.aio.Channel,
        client_id: str,
        client_secret: str,
        *,
        margin: float = 60.0,
        timeout: float = 5.0,
    ):
        creds = ServiceCredentials(client_id, client_secret)
        self._source = ServiceTokenSource(
            identity_token_fetch(identity_channel, lambda: creds, timeout=timeout), margin=margin
        )

    @classmethod
    def from_environment(
        cls, identity_channel: grpc.aio.Channel, data_dir: pathlib.Path | str, service: str, **kwargs
    ) -> ServiceAccountCredentials:
        """From ``GATEHOUSE_SERVICE_CLIENT_ID/SECRET`` or ``$data_dir/credentials/<service>.json``."""
        creds = load_credentials(pathlib.Path(data_dir), service)
        if creds is None:
            raise errors.Unavailable(f"no service credentials for {service!r}", dependency="identity")
        return cls(identity_channel, creds.client_id, creds.client_secret, **kwargs)

    def invalidate(self) -> None:
        self._source.invalidate()

    async def __call__(self) -> str:
        return await self._source()
