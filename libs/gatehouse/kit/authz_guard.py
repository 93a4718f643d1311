"""The guard services use before touching scoped data: ``require(subject, resource, capability)``.

It asks authz (``CheckCapability``) and fails closed: authz unreachable, slow
beyond the deadline (``GATEHOUSE_AUTHZ_TIMEOUT``) or answering with an error means
*deny* with ``UNAVAILABLE`` to the caller — never allow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from gatehouse.kit import errors
from gatehouse.kit.context import Principal

TokenSource = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # DecisionReason name without prefix, e.g. "ROLE", "NO_RELATIONSHIP"
    revision: int


def split_ref(ref: str | tuple[str, str]) -> tuple[str, str]:
    """``"workspace:01J.."`` or ``("workspace", "01J..")`` → ``("workspace", "01J..")``."""
    if isinstance(ref, tuple):
        return ref
    kind, sep, ident = ref.partition(":")
    if not sep or not kind or not ident:
        raise ValueError(f"expected 'type:id', got {ref!r}")
    return kind, ident


class AuthzGuard:
    """Client side of authz for services: checks with a deadline, failing closed."""

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float = 0.5, token_source: TokenSource | None = None
    ):
        from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc

        self._pb = authz_service_pb2
        self._stub = authz_service_pb2_grpc.AuthzServiceStub(channel)
        self._timeout = timeout
        self._token_source = token_source

    async def _metadata(self) -> Sequence[tuple[str, str]]:
        if self._token_source is None:
            return ()
        token = await self._token_source()
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def check(
        self,
        subject: Principal | str,
        resource: str | tuple[str, str],
        capability: str,
        *,
        at_least_revision: int | None = None,
    ) -> Decision:
        """Ask authz; raises :class:`errors.Unavailable` when it cannot answer in time."""
        from gatehouse.authz.v1 import decision_pb2
        from gatehouse.type.v1 import refs_pb2

        amr: tuple[str, ...] = ()
        session_id = ""
        if isinstance(subject, Principal):
            amr, session_id = subject.amr, subject.session_id or ""
            subject = subject.subject
        s_type, s_id = split_ref(subject)
        r_type, r_id = split_ref(resource)
        request = self._pb.CheckCapabilityRequest(
            subject=refs_pb2.SubjectRef(type=s_type, id=s_id),
            resource=refs_pb2.ResourceRef(type=r_type, id=r_id),
            capability=capability,
            authentication_context=decision_pb2.AuthenticationContext(amr=list(amr), session_id=session_id),
        )
        if at_least_revision is not None:
            request.consistency.at_least_revision = at_least_revision
        try:
            answer = await self._stub.CheckCapability(
                request, timeout=self._timeout, metadata=await self._metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise errors.Unavailable(
                f"authorization service did not answer ({exc.code().name}); denied",
                dependency="authz",
                metadata={"authz_code": exc.code().name},
            ) from exc
        except TimeoutError as exc:
            raise errors.Unavailable("authorization service timed out; denied", dependency="authz") from exc
        reason = decision_pb2.DecisionReason.Name(answer.reason).removeprefix("DECISION_REASON_")
        return Decision(allowed=answer.allowed, reason=reason, revision=answer.revision)

    async def require(
        self,
        subject: Principal | str,
        resource: str | tuple[str, str],
        capability: str,
        *,
        at_least_revision: int | None = None,
    ) -> Decision:
        """Return the decision if allowed; raise ``PERMISSION_DENIED`` otherwise, ``UNAVAILABLE`` if unsure."""
        decision = await self.check(subject, resource, capability, at_least_revision=at_least_revision)
        if not decision.allowed:
            r_type, r_id = split_ref(resource)
            reason = "MFA_REQUIRED" if decision.reason == "MFA_REQUIRED" else "CAPABILITY_DENIED"
            raise errors.PermissionDenied(
                f"missing capability {capability!r} on {r_type}:{r_id}",
                capability=capability,
                resource=f"{r_type}:{r_id}",
                reason=reason,
                metadata={"decision_reason": decision.reason},
            )
        return decision
