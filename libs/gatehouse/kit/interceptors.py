"""The server-side per-RPC work every Gatehouse service runs, in this order (outermost first):

1. telemetry (:mod:`gatehouse.kit.telemetry`): trace span and RPC metrics;
2. core: request id, domain error → status mapping, access log;
3. authentication: verifies the bearer token and exposes the principal.

:class:`KitInterceptor` does all three in one interceptor (what
:class:`~gatehouse.kit.server.GatehouseServer` installs); :class:`CoreInterceptor`,
:class:`AuthInterceptor` and ``telemetry.ServerTelemetryInterceptor`` are the same
machinery with one part each, for servers that compose them by hand.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar

import grpc

from gatehouse.kit import errors
from gatehouse.kit.context import (
    CLIENT_ADDRESS_KEY,
    CLIENT_USER_AGENT_KEY,
    NO_CLIENT_INFO,
    ClientInfo,
    Principal,
    bearer_token_var,
    client_info_var,
    principal_var,
    request_id_var,
)
from gatehouse.kit.grpc_util import wrap_handler
from gatehouse.kit.status import to_grpc_status, to_rpc_status

log = logging.getLogger("gatehouse.rpc")
access = logging.getLogger("gatehouse.access")

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 128

# Methods every server answers without a token: health and reflection.
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class _RequestIds:
    """UUIDv7 strings (as :func:`gatehouse.kit.ids.new_id`) for request ids, made in a fraction of
    the time: the time fields and ``rand_a`` are formatted once per millisecond, and ``rand_b``
    counts up from a random start drawn each millisecond (RFC 9562 §6.2, method 2), so ids are
    unique and ordered within a process. A request id only correlates logs and answers, so the
    random bits come from :mod:`random` (reseeded in forked children, as is this cache), not the OS.
    """

    __slots__ = ("_counter", "_ms", "_prefix")

    def __init__(self):
        self._ms, self._prefix, self._counter = -1, "", 0

    def reset(self) -> None:
        self._ms = -1

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF
        if ms != self._ms:
            self._ms = ms
            self._prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{random.getrandbits(12):03x}-"
            self._counter = random.getrandbits(61)  # half the space: counting up never wraps
        self._counter = counter = self._counter + 1
        # the variant bits (10) over the counter's 62 bits: 16 hex digits, split 4-12
        tail = "%016x" % (0x8000000000000000 | counter)
        return f"{self._prefix}{tail[:4]}-{tail[4:]}"


_new_request_id = _RequestIds()
os.register_at_fork(after_in_child=_new_request_id.reset)


# The invocation metadata grpc.aio already converted for the handler lookup (HandlerCallDetails),
# handed to the call it resolves: the lookup and the call run in the same task (the RPC's own,
# whose context nothing else shares), so the call reads it instead of converting it a second time.
_lookup_metadata: ContextVar[tuple | None] = ContextVar("gatehouse_lookup_metadata", default=None)


def _valid_request_id(value: str | None) -> bool:
    return bool(value) and len(value) <= MAX_REQUEST_ID and value.isprintable()


class KitInterceptor(grpc.aio.ServerInterceptor):
    """The kit's per-RPC work in ONE interceptor; each part optional (all on in GatehouseServer).

    In the order they act (outermost first): telemetry (a
    :class:`gatehouse.kit.telemetry.ServerTelemetry`: span and metrics), ``core`` (request id,
    error mapping, access log) and ``verify`` (authentication). A method's handler is wrapped
    once and reused for every later call; per call there is one ``async with`` of one small
    object instead of a chain of nested context managers.
    """

    def __init__(
        self,
        *,
        core: bool = True,
        verify: Verifier | None = None,
        public_methods: Iterable[str] = (),
        telemetry=None,
        ready: asyncio.Event | None = None,
    ):
        self.core = core
        self.verify = verify
        self.public = frozenset(public_methods)
        self.telemetry = telemetry
        self.ready = ready
        self._wrapped: dict[str, tuple] = {}

    def _is_public(self, method: str) -> bool:
        return method in self.public or method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        entry = self._wrapped.get(method)
        if entry is None or entry[0] is not handler:
            entry = (handler, _MethodScope(self, method).wrap(handler))
            self._wrapped[method] = entry
        _lookup_metadata.set(handler_call_details.invocation_metadata)
        return entry[1]


class _MethodScope:
    """What a method's calls share, computed once; calling it gives one call's scope."""

    __slots__ = ("cached", "core", "method", "public", "ready", "telemetry", "unimplemented", "verify")

    def __init__(self, kit: KitInterceptor, method: str):
        self.method = method
        self.core = kit.core
        self.verify = kit.verify
        # a verifier's synchronous cache probe (token -> Principal or None), when it has one:
        # a cached token then costs no coroutine
        self.cached = getattr(kit.verify, "cached", None)
        self.public = kit._is_public(method)
        # health and reflection answer while the service starts; everything else waits for it
        self.ready = None if method.startswith(ALWAYS_PUBLIC_PREFIXES) else kit.ready
        self.telemetry = kit.telemetry.for_method(method) if kit.telemetry is not None else None
        self.unimplemented = f"{method} is not implemented yet"

    def __call__(self, context: grpc.aio.ServicerContext) -> _CallScope:
        return _CallScope(self, context)

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` with the kit around it. A unary call with an async behaviour (every
        Gatehouse servicer method but the streams) takes :meth:`unary`, the hot path; the other
        shapes run inside the scope as an async context manager (:func:`wrap_handler`)."""
        inner = handler.unary_unary
        if inner is None or not inspect.iscoroutinefunction(inner):
            return wrap_handler(handler, self)
        return grpc.unary_unary_rpc_method_handler(
            self.unary(inner),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def unary(self, inner):
        """One coroutine around ``inner``: the scope's work without the context manager protocol,
        and a successful call ends without resetting the context variables (:meth:`_CallScope.close`)."""

        async def call(request, context):
            scope = _CallScope(self, context)
            try:
                token = scope.open()
                if token is not None:
                    await scope.authenticate(token)
                response = await inner(request, context)
            except BaseException as exc:
                await scope.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            scope.close()
            return response

        return call


# Invocation metadata the kit reads, in one pass over it per call.
_READ_KEYS = frozenset(
    {REQUEST_ID_KEY, CLIENT_ADDRESS_KEY, CLIENT_USER_AGENT_KEY, "authorization", "traceparent", "tracestate"}
)


class _CallScope:
    """One call: telemetry, then request id and client info, then the principal.

    An async context manager (streams), or driven by :meth:`_MethodScope.unary`: :meth:`open`,
    :meth:`authenticate` when the token is not cached, then :meth:`close` or ``__aexit__``.
    """

    __slots__ = (
        "client_token",
        "context",
        "logged",
        "principal_tokens",
        "request_token",
        "s",
        "span",
        "trailer",
    )

    def __init__(self, s: _MethodScope, context: grpc.aio.ServicerContext):
        self.s = s
        self.context = context
        self.span = self.request_token = self.principal_tokens = self.logged = None

    async def __aenter__(self):
        try:
            token = self.open()
            if token is not None:
                await self.authenticate(token)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def open(self) -> str | None:
        """Everything of entering that needs no waiting; returns the bearer token still to verify
        (None when there is none, or the verifier had it cached). Raises what refuses the call
        (``__aexit__`` then maps it)."""
        s, context = self.s, self.context
        metadata = _lookup_metadata.get()
        if metadata is None:  # not resolved through KitInterceptor.intercept_service
            metadata = context.invocation_metadata()
        found = {}
        for key, value in metadata or ():
            if key in _READ_KEYS and key not in found:
                found[key] = value if isinstance(value, str) else value.decode()
        if s.telemetry is not None:
            self.span = s.telemetry.begin(found.get("traceparent"), found.get("tracestate"))
        if s.core:
            incoming = found.get(REQUEST_ID_KEY)
            request_id = incoming if _valid_request_id(incoming) else _new_request_id()
            self.request_token = request_id_var.set(request_id)
            forwarded = found.get(CLIENT_ADDRESS_KEY)
            agent = found.get(CLIENT_USER_AGENT_KEY)
            info = NO_CLIENT_INFO
            if forwarded or agent:
                info = ClientInfo((forwarded or "").split(",")[0].strip()[:200], (agent or "")[:500])
            self.client_token = client_info_var.set(info)
            self.trailer = ((REQUEST_ID_KEY, request_id),)
            context.set_trailing_metadata(self.trailer)
            # (started, peer) when the access line is logged; the peer is read now: a call
            # cancelled at shutdown must not be touched afterwards
            self.logged = (time.perf_counter(), context.peer()) if access.isEnabledFor(logging.INFO) else None
        if s.ready is not None and not s.ready.is_set():
            # Start-up hooks (migrations, authz's index load) have not finished: an answer
            # now could come from half-loaded state, so none is given.
            raise errors.Unavailable("the service is starting; retry shortly", reason="SERVICE_STARTING")
        if s.verify is None:
            return None
        header = found.get("authorization")
        if header is None and s.public:
            self.principal_tokens = (principal_var.set(None), bearer_token_var.set(None))
            return None
        token = parse_bearer(header)
        principal = s.cached(token) if s.cached is not None else None
        if principal is None:
            return token
        self.principal_tokens = (principal_var.set(principal), bearer_token_var.set(token))
        return None

    async def authenticate(self, token: str) -> None:
        """Verify ``token`` (the verifier may wait, e.g. for identity's keys) and expose the principal."""
        principal = await self.s.verify(token)
        self.principal_tokens = (principal_var.set(principal), bearer_token_var.set(token))

    def close(self) -> None:
        """The end of a unary call that returned: its access line and its span.

        The context variables set by :meth:`open` are left as they are: a grpc.aio server runs
        each RPC in a task of its own, whose context is a copy nothing else reads, and the task
        ends with the call."""
        if self.logged is not None:
            self._log_access(_code_name(self.context.code(), "OK"), principal_var.get())
        if self.span is not None and self.s.telemetry.needs_code:
            self._finish_telemetry(None, None, None)

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        principal = principal_var.get() if self.logged is not None else None  # for the access line
        if self.principal_tokens is not None:
            principal_var.reset(self.principal_tokens[0])
            bearer_token_var.reset(self.principal_tokens[1])
            self.principal_tokens = None
        if exc_type is None and self.request_token is not None:  # the common path: nothing to map
            self._close_core(
                "OK" if self.logged is None else _code_name(self.context.code(), "OK"), principal
            )
            self._finish_telemetry(None, None, None)
            return False
        try:
            if self.s.core:
                await self._finish_core(exc_type, exc, tb, principal)
        except BaseException as final:
            self._finish_telemetry(type(final), final, final.__traceback__)
            raise
        self._finish_telemetry(exc_type, exc, tb)
        return False

    def _finish_telemetry(self, exc_type, exc, tb) -> None:
        if self.span is not None:
            span, self.span, telemetry = self.span, None, self.s.telemetry
            telemetry.end(span, self.context.code() if telemetry.needs_code else None, exc_type, exc, tb)

    async def _finish_core(self, exc_type, exc, tb, principal: Principal | None) -> None:
        """Maps what the call raised to its status (raising the abort) and logs the access line."""
        s, context = self.s, self.context
        if self.request_token is None:
            return
        code = "OK"
        try:
            if exc_type is None:
                code = _code_name(context.code(), "OK")
            elif issubclass(exc_type, grpc.aio.AbortError):
                code = _code_name(context.code(), "UNKNOWN")
            elif issubclass(exc_type, errors.GatehouseError):
                code = exc.code
                await context.abort_with_status(to_grpc_status(to_rpc_status(exc), self.trailer))
            elif issubclass(exc_type, NotImplementedError):
                code = "UNIMPLEMENTED"
                status = to_rpc_status(errors.Unimplemented(s.unimplemented))
                await context.abort_with_status(to_grpc_status(status, self.trailer))
            elif issubclass(exc_type, Exception):
                code = "INTERNAL"
                log.error(
                    "unhandled error in %s",
                    s.method,
                    exc_info=(exc_type, exc, tb),
                    extra={"method": s.method},
                )
                await context.abort_with_status(to_grpc_status(to_rpc_status(exc), self.trailer))
        finally:
            self._close_core(code, principal)

    def _close_core(self, code: str, principal: Principal | None) -> None:
        """The access line (when enabled), then the request id and client info are reset."""
        if self.logged is not None:
            self._log_access(code, principal)
        request_id_var.reset(self.request_token)
        client_info_var.reset(self.client_token)
        self.request_token = None

    def _log_access(self, code: str, principal: Principal | None) -> None:
        method = self.s.method
        started, peer = self.logged
        access.info(
            "%s %s",
            method,
            code,
            extra={
                "method": method,
                "code": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "peer": peer,
                "principal": principal.subject if principal else None,
            },
        )


class CoreInterceptor(KitInterceptor):
    """Request id, error mapping and the per-RPC access log line.

    - accepts ``x-request-id`` from the caller (or generates one) and echoes it
      in the trailing metadata of every answer, success or failure;
    - maps :class:`~gatehouse.kit.errors.GatehouseError` to its status with
      ``google.rpc`` details, ``NotImplementedError`` to ``UNIMPLEMENTED``, and
      anything else to ``INTERNAL`` with a generic message (full detail logged);
    - logs one access line per RPC with method, code, duration and principal.
    """

    def __init__(self):
        super().__init__(core=True)


def _code_name(code, default: str) -> str:
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:
        return grpc.StatusCode(code).name  # pragma: no cover - grpc versions differ
    except Exception:
        return default


Verifier = Callable[[str], Awaitable[Principal]]


class AuthInterceptor(KitInterceptor):
    """Verifies ``authorization: Bearer <jwt>`` and exposes the :class:`Principal`.

    Every method needs a valid token except health, reflection and the
    service's declared ``public_methods`` (e.g. ``Login``). On a public method a
    token that is present is still verified, so handlers can use it (e.g.
    accepting an invitation as a signed-in user), and a bad one is refused.
    """

    def __init__(self, verify: Verifier, public_methods: Iterable[str] = ()):
        super().__init__(core=False, verify=verify, public_methods=public_methods)


def parse_bearer(header: str | None) -> str:
    """The token of an ``authorization: Bearer <token>`` header; UNAUTHENTICATED otherwise."""
    if not header:
        raise errors.Unauthenticated("missing bearer token", reason="TOKEN_INVALID")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated("authorization must be 'Bearer <token>'", reason="TOKEN_INVALID")
    return token.strip()


def require_principal() -> Principal:
    """The verified caller; UNAUTHENTICATED if the method was called without a token."""
    principal = principal_var.get()
    if principal is None:
        raise errors.Unauthenticated("this call needs a bearer token", reason="TOKEN_INVALID")
    return principal


def require_service_account() -> Principal:
    """The caller, who must be a service account (internal write RPCs)."""
    principal = require_principal()
    if not principal.is_service:
        raise errors.PermissionDenied(
            "only service accounts may call this method", reason="SERVICE_ACCOUNT_REQUIRED"
        )
    return principal
