"""Channels of the client: deadline + retry, bearer token, and trace propagation on every call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

from gatehouse.client.retry import RetryInterceptor, RetryPolicy, method_name

TokenSource = Callable[[], Awaitable[str | None]]

# Calls that must go out without the client's bearer token (they obtain one, or need none).
UNAUTHENTICATED_METHODS = frozenset(
    {"Login", "RefreshSession", "IssueServiceToken", "GetJwks", "ResetPassword", "GetSetupState"}
)


# Refusals after which a fresh token may succeed (the kit's AuthInterceptor reasons).
STALE_TOKEN_REASONS = frozenset({"TOKEN_INVALID", "SESSION_REVOKED"})


class BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` from ``token_source`` (read per attempt, so refreshes apply).

    A call that already carries an ``authorization`` header keeps it (e.g. a
    backend forwarding its caller's token). When a unary call is refused with
    ``UNAUTHENTICATED`` because of the token (keys rotated, session revoked) and
    the credentials can be renewed (``invalidate()``), the token is renewed once
    and the call sent again — safe for any method, since the server refused it
    before running it.
    """

    def __init__(self, token_source: Callable[[], TokenSource | None]):
        self._token_source = token_source

    async def _details(self, details: grpc.aio.ClientCallDetails):
        """(details with the token, the credentials used or None)."""
        source = self._token_source()
        if source is None or method_name(details.method) in UNAUTHENTICATED_METHODS:
            return details, None
        metadata = list(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details, None
        token = await source()
        if not token:
            return details, None
        metadata.append(("authorization", f"Bearer {token}"))
        with_token = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return with_token, source

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        from gatehouse.kit import errors
        from gatehouse.kit.status import error_info

        details, source = await self._details(client_call_details)
        call = await continuation(details, request)
        if source is None or not hasattr(source, "invalidate"):
            return call
        try:
            await call
            return call
        except grpc.aio.AioRpcError as exc:
            info = error_info(exc)
            if (
                exc.code() != grpc.StatusCode.UNAUTHENTICATED
                or info is None
                or info.reason not in STALE_TOKEN_REASONS
            ):
                return call
        source.invalidate()
        try:
            details, _ = await self._details(client_call_details)
        except errors.GatehouseError:
            return call  # no fresh token to be had: the caller sees the original refusal
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        details, _ = await self._details(client_call_details)
        return await continuation(details, request)


def telemetry_interceptors(telemetry=None) -> list:
    """The kit's client interceptors (CLIENT span + ``traceparent``) for ``telemetry``.

    Without one, the process's global tracer provider is used, so an
    application that configured OpenTelemetry gets the client spans in its
    traces, and a call made inside a server span carries that trace onward.
    """
    from opentelemetry import trace

    from gatehouse.kit.telemetry import Telemetry, client_interceptors

    if telemetry is None:
        telemetry = Telemetry(tracer_provider=trace.get_tracer_provider(), meter_provider=None)
    return client_interceptors(telemetry)


def open_channel(
    address: str,
    *,
    token_source: Callable[[], TokenSource | None] = lambda: None,
    retry: RetryPolicy = RetryPolicy(),
    timeout: float | None = 5.0,
    telemetry=None,
    options: Sequence[tuple[str, object]] = (),
) -> tuple[grpc.aio.Channel, RetryInterceptor]:
    """An insecure grpc.aio channel with the client's interceptors (outermost first):
    deadline + retry, bearer token (fetched per attempt), telemetry (one span per attempt)."""
    retrying = RetryInterceptor(retry, default_timeout=timeout)
    interceptors = [retrying, BearerInterceptor(token_source), *telemetry_interceptors(telemetry)]
    channel = grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return channel, retrying
