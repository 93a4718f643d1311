"""The authz guard fails closed.

Authz itself is built in its own issue; here a real grpc.aio server implementing
only AuthzService.CheckCapability with scripted answers stands in for it, so the
guard's behaviour on allow, deny, down and slow is tested over a real channel.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc, decision_pb2
from gatehouse.kit import errors
from gatehouse.kit.authz_guard import AuthzGuard
from gatehouse.kit.context import Principal
from gatehouse.testing.stack import free_port


class ScriptedAuthz(authz_service_pb2_grpc.AuthzServiceServicer):
    def __init__(self):
        self.allow: set[tuple[str, str, str]] = set()
        self.delay = 0.0
        self.requests: list = []
        self.metadata: list = []

    async def CheckCapability(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.delay:
            await asyncio.sleep(self.delay)
        key = (
            f"{request.subject.type}:{request.subject.id}",
            f"{request.resource.type}:{request.resource.id}",
            request.capability,
        )
        allowed = key in self.allow
        reason = (
            decision_pb2.DECISION_REASON_ROLE if allowed else decision_pb2.DECISION_REASON_NO_RELATIONSHIP
        )
        return authz_service_pb2.CheckCapabilityResponse(allowed=allowed, reason=reason, revision=7)


@pytest.fixture
async def authz():
    servicer = ScriptedAuthz()
    server = grpc.aio.server()
    authz_service_pb2_grpc.add_AuthzServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def token():
        return "service-token"

    yield servicer, AuthzGuard(channel, timeout=0.3, token_source=token)
    await channel.close()
    await server.stop(0)


async def test_allowed_passes_with_decision_and_service_token(authz):
    servicer, guard = authz
    servicer.allow.add(("user:u1", "workspace:w1", "manage:members"))
    principal = Principal(kind="user", id="u1", session_id="s1", amr=("pwd", "otp"))
    decision = await guard.require(principal, "workspace:w1", "manage:members", at_least_revision=5)
    assert decision.allowed and decision.reason == "ROLE" and decision.revision == 7
    sent = servicer.requests[-1]
    assert list(sent.authentication_context.amr) == ["pwd", "otp"]
    assert sent.consistency.at_least_revision == 5
    assert servicer.metadata[-1]["authorization"] == "Bearer service-token"


async def test_denied_is_permission_denied_with_details(authz):
    _, guard = authz
    with pytest.raises(errors.PermissionDenied) as info:
        await guard.require("user:u1", "workspace:w1", "delete:workspace")
    exc = info.value
    assert exc.reason == "CAPABILITY_DENIED"
    assert exc.metadata == {
        "capability": "delete:workspace",
        "resource": "workspace:w1",
        "decision_reason": "NO_RELATIONSHIP",
    }


async def test_authz_down_denies_with_unavailable():
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    guard = AuthzGuard(channel, timeout=0.3)
    with pytest.raises(errors.Unavailable) as info:
        await guard.require("user:u1", "workspace:w1", "chat")
    assert info.value.metadata["dependency"] == "authz"
    await channel.close()


async def test_authz_slower_than_deadline_denies(authz):
    servicer, guard = authz
    servicer.allow.add(("user:u1", "workspace:w1", "chat"))
    servicer.delay = 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(errors.Unavailable):
        await guard.require("user:u1", "workspace:w1", "chat")
    assert loop.time() - started < 0.9  # gave up at its deadline, did not wait for the answer
