"""Tenancy's client of identity: create users, look them up, fetch names and emails for member lists."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gatehouse.identity.v1 import identity_service_pb2 as ipb
from gatehouse.identity.v1 import identity_service_pb2_grpc
from gatehouse.kit import errors
from gatehouse.kit.authz_guard import TokenSource
from gatehouse.kit.status import bad_request


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str


def _user(u) -> User:
    return User(u.id, u.email, u.display_name)


class IdentityClient:
    def __init__(self, channel: grpc.aio.Channel, *, token_source: TokenSource | None, timeout: float = 5.0):
        self.stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        self.token_source = token_source
        self.timeout = timeout

    async def _call(self, method: str, request, fields: dict[str, str] | None = None):
        metadata = ()
        if self.token_source is not None:
            token = await self.token_source()
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code == grpc.StatusCode.ALREADY_EXISTS:
                raise errors.AlreadyExists(exc.details() or "a user with this email already exists") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                details = bad_request(exc)
                if details is not None and details.field_violations:
                    raise errors.InvalidArgument(
                        [
                            errors.FieldViolation((fields or {}).get(v.field, v.field), v.description)
                            for v in details.field_violations
                        ]
                    ) from None
                raise errors.InvalidArgument([], exc.details() or "invalid user") from None
            raise errors.Unavailable(
                f"identity service did not answer ({code.name})", dependency="identity"
            ) from exc

    async def create_user(
        self,
        email: str,
        display_name: str,
        password: str,
        request_id: str = "",
        fields: dict[str, str] | None = None,
    ) -> User:
        """Create an account; ``fields`` renames identity's field names in violations to the caller's request."""
        answer = await self._call(
            "CreateUser",
            ipb.CreateUserRequest(
                email=email, display_name=display_name, password=password, request_id=request_id
            ),
            fields,
        )
        return _user(answer.user)

    async def lookup_by_email(self, email: str) -> User | None:
        answer = await self._call("LookupUserByEmail", ipb.LookupUserByEmailRequest(email=email))
        return _user(answer.user) if answer is not None else None

    async def get_user(self, user_id: str) -> User | None:
        answer = await self._call("GetUser", ipb.GetUserRequest(user_id=user_id))
        return _user(answer.user) if answer is not None and answer.user.id else None

    async def users(self, user_ids: list[str]) -> dict[str, User]:
        if not user_ids:
            return {}
        out: dict[str, User] = {}
        for start in range(0, len(user_ids), 1000):
            answer = await self._call(
                "BatchGetUsers", ipb.BatchGetUsersRequest(user_ids=user_ids[start : start + 1000])
            )
            if answer is not None:
                out.update({u.id: _user(u) for u in answer.users})
        return out
