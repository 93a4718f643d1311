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


class BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` from ``token_source`` (read per attempt, so refreshes apply).

    A call that already carries an ``authorization`` header keeps it (e.g. a
    backend forwarding its caller's token).
    """

    def __init__(self, token_source: Callable[[], TokenSource | None]):
        self._token_source = token_source

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        source = self._token_source()
        if source is None or method_name(details.method) in UNAUTHENTICATED_METHODS:
            return details
        metadata = list(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details
        token = await source()
        if not token:
            return details
        metadata.append(("authorization", f"Bearer {token}"))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(await self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(await self._details(client_call_details), request)


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
