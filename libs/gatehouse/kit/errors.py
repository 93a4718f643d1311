"""Typed domain errors.

Domain code raises these; one interceptor (:mod:`gatehouse.kit.status`) maps them
to gRPC status codes with ``google.rpc`` details, as in STYLE.md. This module
imports neither grpc nor sqlalchemy, so domain layers can use it freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (becomes a ``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


class GatehouseError(Exception):
    """Base of every error a use case may raise on purpose.

    ``code`` is the name of the gRPC status code; ``reason`` (a value of
    ``gatehouse.type.v1.ErrorReason``) and ``metadata`` become a
    ``google.rpc.ErrorInfo`` detail when a reason is set.
    """

    code = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(GatehouseError):
    code = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str | None = None):
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        if message is None:
            message = "; ".join(f"{v.field}: {v.description}" for v in self.violations) or "invalid request"
        super().__init__(message)

    @classmethod
    def field(cls, name: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(name, description)])


class Unauthenticated(GatehouseError):
    code = "UNAUTHENTICATED"


class PermissionDenied(GatehouseError):
    code = "PERMISSION_DENIED"

    def __init__(
        self,
        message: str = "permission denied",
        *,
        capability: str | None = None,
        resource: str | None = None,
        reason: str = "CAPABILITY_DENIED",
        metadata: dict[str, str] | None = None,
    ):
        md = dict(metadata or {})
        if capability:
            md["capability"] = capability
        if resource:
            md["resource"] = resource
        super().__init__(message, reason=reason, metadata=md)
        self.capability = capability
        self.resource = resource


class NotFound(GatehouseError):
    """Unknown, soft-deleted, or another tenant's id: the same answer for all three."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, ident: str = ""):
        super().__init__(f"{kind} {ident!r} not found" if ident else f"{kind} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(GatehouseError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(GatehouseError):
    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, reason: str, metadata: dict[str, str] | None = None):
        super().__init__(message, reason=reason, metadata=metadata)


class Aborted(GatehouseError):
    code = "ABORTED"


class ResourceExhausted(GatehouseError):
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float, reason: str | None = None):
        md = {"retry_after_seconds": str(max(1, int(retry_after + 0.999)))}
        super().__init__(message, reason=reason, metadata=md)
        self.retry_after = retry_after


class Unavailable(GatehouseError):
    """A dependency did not answer; callers fail closed."""

    code = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        dependency: str | None = None,
        reason: str = "DEPENDENCY_UNAVAILABLE",
        metadata: dict[str, str] | None = None,
    ):
        md = dict(metadata or {})
        if dependency:
            md["dependency"] = dependency
        super().__init__(message, reason=reason, metadata=md)


class Unimplemented(GatehouseError):
    code = "UNIMPLEMENTED"


@dataclass
class ErrorCollector:
    """Collects field violations so a request reports every bad field at once."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(name, description))

    def require(self, condition: bool, name: str, description: str) -> None:
        if not condition:
            self.add(name, description)

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
