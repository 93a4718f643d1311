"""Guard the gRPC server of your own backend with Gatehouse: token, capability, right status.

Declare per RPC which capability on which resource it needs; the guard runs
*before* the handler and answers

- ``UNAUTHENTICATED`` — no, malformed, expired or revoked bearer token;
- ``INVALID_ARGUMENT`` — the request does not name the resource (empty id);
- ``NOT_FOUND`` — the caller has no access at all to the resource's
  organization (nor any capability on the resource itself), or the resource is
  not registered with authz: exactly the answer for an id that does not exist,
  so another tenant's ids do not leak;
- ``PERMISSION_DENIED`` — the caller can see the resource's organization (or
  holds some other capability on the resource) but lacks this capability;
- ``UNAVAILABLE`` — authz (or identity's keys) did not answer: fail closed.

Three ways to declare, usable together:

1. ``requires`` — declared at import time, enforced by the interceptor (the
   example's way)::

       class Notes(notes_pb2_grpc.NotesServiceServicer):
           @requires("read", resource=from_field("note", "note_id"))
           async def GetNote(self, request, context): ...

       guard = Guard(AuthzClient(authz_channel, token_source=service_token), verifier)
       server = grpc.aio.server(interceptors=[..., guard.interceptor()])  # last = innermost

   A ``requires`` method called without the interceptor refuses to run.
2. ``guard.require`` — the same, but the decorated method enforces on its own
   (no interceptor needed); needs the guard instance at class definition.
3. ``guard.interceptor(rules={"/pkg.Svc/Method": guard.rule(...)})`` — rules by
   method name, for servicers you cannot decorate.

The interceptor refuses every method that has no rule (PERMISSION_DENIED): a
forgotten declaration is never an open door. Health and reflection stay public;
``public_methods`` adds more. Inside the handler
``gatehouse.kit.context.current_principal()`` is the verified caller.

A caller that just changed something can send the revision it got as
``x-gatehouse-revision`` metadata; the check then waits for authz to reach it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from gatehouse.client.authz import AuthzClient
from gatehouse.kit import errors
from gatehouse.kit.context import Principal, bearer_token_var, current_request_id, principal_var
from gatehouse.kit.interceptors import ALWAYS_PUBLIC_PREFIXES, parse_bearer
from gatehouse.kit.peers import IdentityVerifier
from gatehouse.kit.status import to_grpc_status, to_rpc_status

log = logging.getLogger("gatehouse.client.guard")

Verifier = Callable[[str], Awaitable[Principal]]
ResourceOf = Callable[[Any], "tuple[str, str] | Awaitable[tuple[str, str]]"]
REVISION_KEY = "x-gatehouse-revision"
RULE_ATTRIBUTE = "__gatehouse_rule__"


def from_field(resource_type: str, field: str) -> ResourceOf:
    """``resource=from_field("workspace", "workspace_id")``: the resource id is a request field
    (an empty field is reported as INVALID_ARGUMENT on that field)."""

    def resource_of(request) -> tuple[str, str]:
        return resource_type, getattr(request, field)

    resource_of.field = field  # type: ignore[attr-defined]
    return resource_of


@dataclass(frozen=True, eq=False)
class Rule:
    """What one RPC needs: ``capability`` on the resource ``resource(request)`` returns."""

    capability: str
    resource: ResourceOf
    self_enforcing: bool = False  # True for Guard.require: the decorated method checks on its own


# The rule the GuardInterceptor authorized for the call in progress (read by `requires` wrappers).
_authorized: contextvars.ContextVar[Rule | None] = contextvars.ContextVar(
    "gatehouse_guard_rule", default=None
)


def requires(capability: str, *, resource: ResourceOf):
    """Declare a servicer method's rule at import time; :meth:`Guard.interceptor` enforces it.

    Fail-closed: if the method is ever called without the interceptor having
    authorized the call (interceptor not installed, or not innermost), it
    answers PERMISSION_DENIED instead of running.
    """
    rule = Rule(capability, resource)

    def decorate(fn):
        refusal = errors.PermissionDenied(
            f"{fn.__name__} is declared with a Gatehouse rule but the guard interceptor is not installed",
            reason="CAPABILITY_DENIED",
        )
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def streaming(servicer, request, context):
                if _authorized.get() is not rule:
                    await _abort(context, refusal)
                async for item in fn(servicer, request, context):
                    yield item

            wrapper = streaming
        else:

            @functools.wraps(fn)
            async def wrapper(servicer, request, context):
                if _authorized.get() is not rule:
                    await _abort(context, refusal)
                return await fn(servicer, request, context)

        setattr(wrapper, RULE_ATTRIBUTE, rule)
        return wrapper

    return decorate


def identity_verifier(identity_channel: grpc.aio.Channel, **kwargs) -> IdentityVerifier:
    """See :class:`IdentityVerifier`."""
    return IdentityVerifier(identity_channel, **kwargs)


def _metadata_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


@contextlib.contextmanager
def _acting_as(principal: Principal, token: str, rule: Rule | None = None):
    p, b, r = principal_var.set(principal), bearer_token_var.set(token), _authorized.set(rule)
    try:
        yield
    finally:
        principal_var.reset(p)
        bearer_token_var.reset(b)
        _authorized.reset(r)


async def _abort(context: grpc.aio.ServicerContext, exc: errors.GatehouseError):
    request_id = current_request_id()
    trailer = (("x-request-id", request_id),) if request_id else ()
    await context.abort_with_status(to_grpc_status(to_rpc_status(exc), trailer))


class Guard:
    """Verifies the caller and asks authz before a handler runs (see the module docstring)."""

    def __init__(
        self,
        authz: AuthzClient,
        verifier: Verifier,
        *,
        visibility_capability: str = "org:view",
    ):
        self.authz = authz
        self.verifier = verifier
        self.visibility_capability = visibility_capability

    # ---- declaring ------------------------------------------------------------
    def rule(self, capability: str, *, resource: ResourceOf) -> Rule:
        return Rule(capability, resource)

    def require(self, capability: str, *, resource: ResourceOf):
        """Decorator for a servicer method (unary or server-streaming) that enforces the rule."""
        rule = Rule(capability, resource, self_enforcing=True)

        def decorate(fn):
            if inspect.isasyncgenfunction(fn):

                @functools.wraps(fn)
                async def streaming(servicer, request, context):
                    principal, token = await self._authorize_or_abort(rule, request, context)
                    with _acting_as(principal, token):
                        async for item in fn(servicer, request, context):
                            yield item

                wrapper = streaming
            else:

                @functools.wraps(fn)
                async def wrapper(servicer, request, context):
                    principal, token = await self._authorize_or_abort(rule, request, context)
                    with _acting_as(principal, token):
                        return await fn(servicer, request, context)

            setattr(wrapper, RULE_ATTRIBUTE, rule)
            return wrapper

        return decorate

    def interceptor(
        self, rules: Mapping[str, Rule] | None = None, *, public_methods: Iterable[str] = ()
    ) -> GuardInterceptor:
        """A server interceptor enforcing ``rules`` by full method name and refusing unguarded methods."""
        return GuardInterceptor(self, dict(rules or {}), frozenset(public_methods))

    # ---- deciding -------------------------------------------------------------
    async def authenticate(self, metadata) -> tuple[Principal, str]:
        token = parse_bearer(_metadata_value(metadata, "authorization"))
        try:
            return await self.verifier(token), token
        except errors.GatehouseError:
            raise
        except Exception as exc:
            log.warning("token verification failed unexpectedly: %s", exc)
            raise errors.Unavailable("could not verify the access token", dependency="identity") from exc

    async def authorize(self, rule: Rule, request, metadata) -> tuple[Principal, str]:
        """The verified caller if ``rule`` allows the call; raises the right GatehouseError otherwise."""
        principal, token = await self.authenticate(metadata)
        resource = rule.resource(request)
        if inspect.isawaitable(resource):
            resource = await resource
        r_type, r_id = resource
        if not r_id:
            raise errors.InvalidArgument.field(getattr(rule.resource, "field", "resource"), "is required")
        revision = _metadata_value(metadata, REVISION_KEY)
        at_least = None
        if revision:
            if not revision.isdigit():
                raise errors.InvalidArgument.field(REVISION_KEY, "must be a revision number")
            at_least = int(revision)
        decision = await self.authz.check(
            principal, (r_type, r_id), rule.capability, at_least_revision=at_least
        )
        if not decision.allowed:
            await self._refuse(principal, (r_type, r_id), rule.capability, decision.reason)
        return principal, token

    async def _refuse(self, principal: Principal, resource: tuple[str, str], capability: str, reason: str):
        """PERMISSION_DENIED if the caller may know the resource exists, NOT_FOUND otherwise."""
        denied = errors.PermissionDenied(
            f"missing capability {capability!r} on {resource[0]}:{resource[1]}",
            capability=capability,
            resource=f"{resource[0]}:{resource[1]}",
            reason="MFA_REQUIRED" if reason == "MFA_REQUIRED" else "CAPABILITY_DENIED",
            metadata={"decision_reason": reason},
        )
        if reason == "MFA_REQUIRED":
            raise denied
        if (await self.authz.access(principal, resource)).capabilities:
            raise denied
        org = await self.authz.organization_of(resource)
        if org is not None:
            visible = await self.authz.check(principal, ("organization", org), self.visibility_capability)
            if visible.allowed:
                raise denied
        raise errors.NotFound(resource[0], resource[1])

    async def _authorize_or_abort(self, rule: Rule, request, context) -> tuple[Principal, str]:
        try:
            return await self.authorize(rule, request, context.invocation_metadata())
        except errors.GatehouseError as exc:
            await _abort(context, exc)
            raise  # abort raises; never reached


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Enforces method-name rules, lets decorated handlers enforce theirs, refuses everything else."""

    def __init__(self, guard: Guard, rules: dict[str, Rule], public: frozenset[str]):
        self._guard = guard
        self._rules = rules
        self._public = public

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._public or method.startswith(ALWAYS_PUBLIC_PREFIXES):
            return handler
        behaviour = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        )
        explicit, declared = self._rules.get(method), getattr(behaviour, RULE_ATTRIBUTE, None)
        if explicit is None and declared is not None and declared.self_enforcing:
            return handler  # Guard.require: the decorated method enforces it
        # Both an explicit and a `requires` rule: both must allow (the stricter wins).
        checks = [r for r in (explicit, declared) if r is not None and not r.self_enforcing]
        rule = declared if declared is not None and not declared.self_enforcing else explicit
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        guard = self._guard
        if rule is None or handler.stream_unary or handler.stream_stream:
            why = (
                "has no access rule" if rule is None else "streams requests and cannot be guarded by a field"
            )
            log.error("refusing %s: it %s", method, why)
            refusal = errors.PermissionDenied(f"{method} {why}; refused", reason="CAPABILITY_DENIED")

            async def refuse(request, context):
                await _abort(context, refusal)

            if handler.unary_unary or handler.stream_unary:
                make = (
                    grpc.unary_unary_rpc_method_handler
                    if handler.unary_unary
                    else grpc.stream_unary_rpc_method_handler
                )
                return make(refuse, **kwargs)

            async def refuse_stream(request, context):
                await _abort(context, refusal)
                yield  # pragma: no cover

            make = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream
                else grpc.stream_stream_rpc_method_handler
            )
            return make(refuse_stream, **kwargs)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                for check in checks:
                    principal, token = await guard._authorize_or_abort(check, request, context)
                with _acting_as(principal, token, rule):
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        inner_stream = handler.unary_stream

        async def streaming(request, context):
            for check in checks:
                principal, token = await guard._authorize_or_abort(check, request, context)
            with _acting_as(principal, token, rule):
                async for item in inner_stream(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
