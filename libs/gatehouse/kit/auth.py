"""Access-token verification for every service: local, against identity's JWKS.

:class:`JwksCache` holds identity's public keys, re-fetching on an unknown
``kid`` (key rotation) at most once per ``min_refetch`` seconds so random kids
cannot hammer identity, and serving cached keys when identity is unreachable.
:class:`TokenVerifier` turns a bearer token into a
:class:`~gatehouse.kit.context.Principal` or raises ``UNAUTHENTICATED``
(``TOKEN_INVALID`` / ``SESSION_REVOKED``); :class:`RevocationPoller` feeds it the
sessions identity revoked (``ListRevocations``), so a revoked session's tokens are
refused within about one poll interval. Only ES256 is accepted: ``alg: none``
and HMAC algorithms (the "public key as HMAC secret" confusion) are refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import jwt

from gatehouse.kit import errors
from gatehouse.kit.aio import wait_event
from gatehouse.kit.context import Principal
from gatehouse.kit.keys import ALLOWED_ALGORITHMS, PRINCIPAL_CLAIM, PRINCIPAL_TYPES, jwk_to_public_key

log = logging.getLogger("gatehouse.auth")

INVALID = "invalid or expired access token"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti", PRINCIPAL_CLAIM)

Fetch = Callable[[], Awaitable[list[dict]]]


class JwksCache:
    """Identity's public keys by kid, fetched through ``fetch`` and cached."""

    def __init__(self, fetch: Fetch, *, refresh_interval: float = 300.0, min_refetch: float = 5.0):
        self._fetch = fetch
        self._refresh_interval = refresh_interval
        self._min_refetch = min_refetch
        self._keys: dict[str, object] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._inflight: asyncio.Future | None = None

    async def _refresh(self) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        self._attempted_at = time.monotonic()
        try:
            jwks = await self._fetch()
            keys = {}
            for jwk in jwks:
                try:
                    keys[jwk["kid"]] = jwk_to_public_key(jwk)
                except (KeyError, ValueError) as exc:
                    log.warning("ignoring unusable JWK: %s", exc)
            self._keys = keys
            self._fetched_at = time.monotonic()
        except Exception as exc:
            log.warning("could not fetch signing keys from identity: %s", exc)
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    async def get_key(self, kid: str):
        """The public key for ``kid``, or None if identity does not know it."""
        now = time.monotonic()
        stale = now - self._fetched_at > self._refresh_interval
        unknown = kid not in self._keys
        if (stale or unknown) and now - self._attempted_at >= self._min_refetch:
            await self._refresh()
        elif self._inflight is not None:
            await asyncio.shield(self._inflight)
        if not self._keys:
            raise errors.Unavailable("signing keys are not available", dependency="identity")
        return self._keys.get(kid)


class RevocationList:
    """Revoked session ids (fed from identity's revocations), forgotten after they expire."""

    def __init__(self):
        self._revoked: dict[str, float] = {}
        self.last_sequence = 0

    def apply(self, revocations: Iterable[tuple[str, float, int]]) -> None:
        """Add ``(session_id, expires_at_epoch, sequence)`` entries."""
        for session_id, expires_at, sequence in revocations:
            self._revoked[session_id] = expires_at
            self.last_sequence = max(self.last_sequence, sequence)
        now = time.time()
        for sid in [s for s, exp in self._revoked.items() if exp < now]:
            del self._revoked[sid]

    async def is_revoked(self, session_id: str | None, token_id: str | None = None) -> bool:
        return bool(session_id) and session_id in self._revoked


# Returns the revocations after a sequence number as ``(session_id, expires_at_epoch, sequence)``.
RevocationFetch = Callable[[int], Awaitable[list[tuple[str, float, int]]]]


class RevocationPoller:
    """Keeps a :class:`RevocationList` current by polling identity every ``interval`` seconds.

    Its :meth:`is_revoked` is what :class:`TokenVerifier` takes. The poll loop
    starts on first use (or with :meth:`start`). Until the first successful poll
    every verification waits up to ``initial_wait`` seconds and then fails
    closed with ``UNAVAILABLE`` (a service that never saw the revocations cannot
    know a token is still good); after that, a failing poll keeps the last known
    list (logged), so identity being briefly down does not stop every service.
    """

    def __init__(self, fetch: RevocationFetch, *, interval: float = 1.0, initial_wait: float = 3.0):
        self.revocations = RevocationList()
        self._fetch = fetch
        self._interval = interval
        self._initial_wait = initial_wait
        self._synced = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last_success = float("-inf")

    async def poll_once(self) -> int:
        """Fetch and apply what is new; returns how many entries arrived."""
        entries = await self._fetch(self.revocations.last_sequence)
        self.revocations.apply(entries)
        self.last_success = time.monotonic()
        self._synced.set()
        return len(entries)

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.poll_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("could not fetch revocations from identity (%s times): %s", failures, exc)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="gatehouse-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def is_revoked(self, session_id: str | None, token_id: str | None = None) -> bool:
        self.start()
        if not self._synced.is_set() and not await wait_event(self._synced, self._initial_wait):
            raise errors.Unavailable("session revocations are not available yet", dependency="identity")
        return await self.revocations.is_revoked(session_id, token_id)


class TokenVerifier:
    """Verifies access tokens locally; raises UNAUTHENTICATED for anything not perfectly valid."""

    def __init__(
        self,
        keys: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway: float = 5.0,
        is_revoked: Callable[[str | None, str | None], Awaitable[bool]] | None = None,
    ):
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._is_revoked = is_revoked

    def _reject(self, why: str) -> errors.Unauthenticated:
        log.info("token rejected: %s", why)
        return errors.Unauthenticated(INVALID, reason="TOKEN_INVALID")

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise self._reject(f"malformed: {exc}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise self._reject(f"algorithm {alg!r} not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise self._reject("no kid")
        key = await self._keys.get_key(kid)
        if key is None:
            raise self._reject(f"unknown kid {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_iat": True},
            )
        except jwt.PyJWTError as exc:
            raise self._reject(str(exc)) from None
        if claims["iat"] > time.time() + self._leeway:
            raise self._reject("issued in the future")
        kind = claims[PRINCIPAL_CLAIM]
        if kind not in PRINCIPAL_TYPES:
            raise self._reject(f"unknown principal type {kind!r}")
        amr = claims.get("amr") or []
        if not isinstance(amr, list) or not all(isinstance(m, str) for m in amr):
            raise self._reject("amr must be a list of strings")
        principal = Principal(
            kind=kind,
            id=str(claims["sub"]),
            session_id=claims.get("sid"),
            amr=tuple(amr),
            token_id=claims["jti"],
            expires_at=float(claims["exp"]),
            claims=claims,
        )
        if self._is_revoked is not None and await self._is_revoked(principal.session_id, principal.token_id):
            raise errors.Unauthenticated("the session was revoked", reason="SESSION_REVOKED")
        return principal
