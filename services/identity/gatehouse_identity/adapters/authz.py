"""Identity's side of authz: the platform-admin question and the subject-state messages.

- :class:`AuthzAccess` asks ``CheckCapability(user, platform:platform,
  platform:manage_users)`` through the kit's fail-closed :class:`AuthzGuard`:
  authz unreachable or slow → ``UNAVAILABLE``, never an allow.
- :func:`subject_state_message` is the ``WriteRelationships`` request that marks
  a user disabled / enabled; use cases put it in the outbox (topic ``authz``)
  in the same transaction as the state change, and :func:`authz_relay`
  delivers it with ``request_id`` = outbox entry id (authz is idempotent by it).
"""

from __future__ import annotations

import grpc

from gatehouse.kit.authz_guard import AuthzGuard
from gatehouse.kit.context import Principal
from gatehouse.kit.db import Database
from gatehouse.kit.outbox import OutboxEntry, OutboxRelay

PLATFORM = "platform:platform"
MANAGE_USERS = "platform:manage_users"
TOPIC = "authz"


class AuthzAccess:
    def __init__(self, channel: grpc.aio.Channel, *, timeout: float, token_source):
        self._guard = AuthzGuard(channel, timeout=timeout, token_source=token_source)

    async def is_platform_admin(self, principal: Principal) -> bool:
        return (await self._guard.check(principal, PLATFORM, MANAGE_USERS)).allowed


def subject_state_message(user_id: str, disabled: bool) -> bytes:
    from gatehouse.authz.v1 import authz_service_pb2, relationship_pb2
    from gatehouse.type.v1 import refs_pb2

    update = relationship_pb2.RelationshipUpdate(
        operation=relationship_pb2.RelationshipUpdate.OPERATION_TOUCH,
        subject_state=relationship_pb2.SubjectState(
            subject=refs_pb2.SubjectRef(type="user", id=user_id), disabled=disabled
        ),
    )
    return authz_service_pb2.WriteRelationshipsRequest(updates=[update]).SerializeToString()


def authz_relay(
    database: Database, channel: grpc.aio.Channel, token_source, *, timeout: float = 5.0
) -> OutboxRelay:
    """Delivers pending authz writes in order, one request each, idempotent by entry id."""
    from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc

    stub = authz_service_pb2_grpc.AuthzServiceStub(channel)

    async def deliver(entries: list[OutboxEntry]) -> None:
        for entry in entries:
            request = authz_service_pb2.WriteRelationshipsRequest.FromString(entry.payload)
            request.request_id = entry.id
            token = await token_source()
            await stub.WriteRelationships(
                request, timeout=timeout, metadata=(("authorization", f"Bearer {token}"),)
            )

    return OutboxRelay(database, TOPIC, deliver, batch_size=20, ordered=True)
