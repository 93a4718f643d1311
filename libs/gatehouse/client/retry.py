"""Per-call deadlines and retries with exponential back-off and jitter.

Only *idempotent* calls are retried, and only when the server answered
``UNAVAILABLE`` (it could not take the call: down, restarting, overloaded, or
authz not yet at a requested revision). A call is idempotent when its method
name starts with ``Get``, ``List``, ``Check``, ``Lookup``, ``Read`` or
``BatchGet`` (reads), or when its request carries a non-empty ``request_id``
(the server deduplicates the retry). Everything else — ``Login``,
``RefreshSession`` (a refresh token is single-use: replaying it would revoke the
session), creates without a ``request_id`` — is sent exactly once.

The deadline covers the whole call, retries included: every attempt gets the
time that is left, and no back-off sleeps past the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

log = logging.getLogger("gatehouse.client")

IDEMPOTENT_PREFIXES = ("Get", "List", "Check", "Lookup", "Read", "BatchGet")
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an idempotent call is retried on ``UNAVAILABLE``."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Delay after failed attempt ``attempt`` (1-based): "equal jitter", half fixed, half random."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return ceiling / 2 + rng() * ceiling / 2


NO_RETRY = RetryPolicy(max_attempts=1)


def method_name(method: str | bytes) -> str:
    """``/pkg.Service/Method`` → ``Method``."""
    if isinstance(method, bytes):
        method = method.decode()
    return method.rsplit("/", 1)[-1]


def is_idempotent(method: str | bytes, request) -> bool:
    """Whether a call may safely be sent again (see the module docstring)."""
    if method_name(method).startswith(IDEMPOTENT_PREFIXES):
        return True
    return bool(getattr(request, "request_id", ""))


def with_timeout(details: grpc.aio.ClientCallDetails, timeout: float | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
    )


class RetryInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Applies the default deadline to every call and retries idempotent unary calls on UNAVAILABLE.

    Streaming calls (``Watch``) get no default deadline and are never retried
    here: a stream's consumer knows where to resume.
    """

    def __init__(
        self,
        policy: RetryPolicy = RetryPolicy(),
        *,
        default_timeout: float | None = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.policy = policy
        self.default_timeout = default_timeout
        self._sleep = sleep
        self.retries = 0  # attempts beyond the first, over the interceptor's life (for tests and metrics)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        timeout = client_call_details.timeout
        if timeout is None:
            timeout = self.default_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        retryable = is_idempotent(client_call_details.method, request)
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = await continuation(with_timeout(client_call_details, remaining), request)
            if not retryable or attempt >= self.policy.max_attempts:
                return call
            try:
                await call
                return call
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE_CODES:
                    return call
            delay = self.policy.backoff(attempt)
            if deadline is not None and time.monotonic() + delay >= deadline:
                return call
            log.debug("retrying %s after UNAVAILABLE in %.3fs", client_call_details.method, delay)
            self.retries += 1
            await self._sleep(delay)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(client_call_details, request)
