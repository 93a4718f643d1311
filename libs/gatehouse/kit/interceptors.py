"""Server interceptors every Gatehouse service runs, in this order (outermost first):

1. telemetry (:mod:`gatehouse.kit.telemetry`): trace span and RPC metrics;
2. :class:`CoreInterceptor`: request id, domain error → status mapping, access log;
3. :class:`AuthInterceptor`: verifies the bearer token and exposes the principal.

Each is built on :func:`gatehouse.kit.grpc_util.wrap_handler`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc

from gatehouse.kit import errors
from gatehouse.kit.context import (
    CLIENT_ADDRESS_KEY,
    CLIENT_USER_AGENT_KEY,
    ClientInfo,
    Principal,
    bearer_token_var,
    client_info_var,
    principal_var,
    request_id_var,
)
from gatehouse.kit.grpc_util import metadata_value, wrap_handler
from gatehouse.kit.ids import new_id
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


def _valid_request_id(value: str | None) -> bool:
    return bool(value) and len(value) <= MAX_REQUEST_ID and value.isprintable()


class CoreInterceptor(grpc.aio.ServerInterceptor):
    """Request id, error mapping and the per-RPC access log line.

    - accepts ``x-request-id`` from the caller (or generates one) and echoes it
      in the trailing metadata of every answer, success or failure;
    - maps :class:`~gatehouse.kit.errors.GatehouseError` to its status with
      ``google.rpc`` details, ``NotImplementedError`` to ``UNIMPLEMENTED``, and
      anything else to ``INTERNAL`` with a generic message (full detail logged);
    - logs one access line per RPC with method, code, duration and principal.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method

        @contextlib.asynccontextmanager
        async def scope(context: grpc.aio.ServicerContext):
            incoming = metadata_value(context, REQUEST_ID_KEY)
            request_id = incoming if _valid_request_id(incoming) else new_id()
            token = request_id_var.set(request_id)
            forwarded = (metadata_value(context, CLIENT_ADDRESS_KEY) or "").split(",")[0].strip()
            client_token = client_info_var.set(
                ClientInfo(forwarded[:200], (metadata_value(context, CLIENT_USER_AGENT_KEY) or "")[:500])
            )
            trailer = ((REQUEST_ID_KEY, request_id),)
            context.set_trailing_metadata(trailer)
            started = time.perf_counter()
            peer = context.peer()  # read now: a call cancelled at shutdown must not be touched afterwards
            code = "OK"
            try:
                yield
            except grpc.aio.AbortError:
                code = _code_name(context.code(), "UNKNOWN")
                raise
            except errors.GatehouseError as exc:
                code = exc.code
                await context.abort_with_status(to_grpc_status(to_rpc_status(exc), trailer))
            except NotImplementedError:
                code = "UNIMPLEMENTED"
                await context.abort_with_status(
                    to_grpc_status(
                        to_rpc_status(errors.Unimplemented(f"{method} is not implemented yet")), trailer
                    )
                )
            except Exception as exc:
                code = "INTERNAL"
                log.exception("unhandled error in %s", method, extra={"method": method})
                await context.abort_with_status(to_grpc_status(to_rpc_status(exc), trailer))
            else:
                code = _code_name(context.code(), "OK")
            finally:
                principal = principal_var.get()
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
                request_id_var.reset(token)
                client_info_var.reset(client_token)

        return wrap_handler(handler, scope)


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


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies ``authorization: Bearer <jwt>`` and exposes the :class:`Principal`.

    Every method needs a valid token except health, reflection and the
    service's declared ``public_methods`` (e.g. ``Login``). On a public method a
    token that is present is still verified, so handlers can use it (e.g.
    accepting an invitation as a signed-in user), and a bad one is refused.
    """

    def __init__(self, verify: Verifier, public_methods: Iterable[str] = ()):
        self._verify = verify
        self._public = frozenset(public_methods)

    def _is_public(self, method: str) -> bool:
        return method in self._public or method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        public = self._is_public(method)
        verify = self._verify

        @contextlib.asynccontextmanager
        async def scope(context: grpc.aio.ServicerContext):
            header = metadata_value(context, "authorization")
            principal = None
            token = None
            if header is not None or not public:
                token = parse_bearer(header)
                principal = await verify(token)
            p_token = principal_var.set(principal)
            b_token = bearer_token_var.set(token)
            try:
                yield
            finally:
                principal_var.reset(p_token)
                bearer_token_var.reset(b_token)

        return wrap_handler(handler, scope)


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
