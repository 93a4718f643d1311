"""Token handling of the client: login, refresh *before* expiry, single-use refresh tokens.

Identity's Login/RefreshSession are served here by a small stand-in servicer on
a real grpc.aio server (real ES256 tokens from TokenMint, rotating single-use
refresh tokens, reuse refused with UNAUTHENTICATED): the identity service is
being built in parallel; the client's behaviour is what is under test. The
calls go through a real authz-shaped endpoint that records the bearer tokens.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.client import GatehouseClient
from gatehouse.identity.v1 import identity_service_pb2 as ipb
from gatehouse.identity.v1 import identity_service_pb2_grpc
from gatehouse.kit import errors
from gatehouse.kit.keys import issue_token
from gatehouse.kit.status import to_grpc_status, to_rpc_status
from gatehouse.testing.tokens import AUDIENCE, ISSUER, TokenMint

TTL = 900


class StandInIdentity(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(self, mint: TokenMint):
        self.mint = mint
        self.live_refresh: dict[str, str] = {}  # refresh token -> user id
        self.refresh_calls: list[str] = []
        self.logins = 0

    def _tokens(self, user: str):
        now = int(time.time())
        access = issue_token(
            self.mint.key,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject=user,
            principal_type="user",
            session_id="s1",
            amr=("pwd",),
            ttl_seconds=TTL,
            now=now,
        )
        refresh = secrets.token_urlsafe(16)
        self.live_refresh[refresh] = user
        return access, timestamp_pb2.Timestamp(seconds=now + TTL), refresh

    async def Login(self, request, context):
        if request.password != "correct horse":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad credentials")
        self.logins += 1
        access, expires, refresh = self._tokens("ada")
        return ipb.LoginResponse(
            access_token=access, access_token_expire_time=expires, refresh_token=refresh, session_id="s1"
        )

    async def RefreshSession(self, request, context):
        self.refresh_calls.append(request.refresh_token)
        user = self.live_refresh.pop(request.refresh_token, None)
        if user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "refresh token used or revoked")
        access, expires, refresh = self._tokens(user)
        return ipb.RefreshSessionResponse(
            access_token=access, access_token_expire_time=expires, refresh_token=refresh, session_id="s1"
        )


class Recorder(authz_service_pb2_grpc.AuthzServiceServicer):
    def __init__(self, mint: TokenMint):
        self.mint = mint
        self.tokens: list[str] = []
        self.refused: set[str] = set()  # tokens to refuse as a server does for a revoked session
        self.calls = 0

    async def GetCatalog(self, request, context):
        self.calls += 1
        token = dict(context.invocation_metadata())["authorization"].removeprefix("Bearer ")
        await self.mint.verifier(token)  # a real, unexpired token signed by the key
        if token in self.refused:
            refusal = errors.Unauthenticated("the session was revoked", reason="SESSION_REVOKED")
            await context.abort_with_status(to_grpc_status(to_rpc_status(refusal)))
        self.tokens.append(token)
        return apb.GetCatalogResponse()


@pytest.fixture
async def stack():
    mint = TokenMint()
    identity, recorder = StandInIdentity(mint), Recorder(mint)
    server = grpc.aio.server()
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(identity, server)
    authz_service_pb2_grpc.add_AuthzServiceServicer_to_server(recorder, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    client = GatehouseClient({"identity": address, "authz": address})
    yield client, identity, recorder
    await client.close()
    await server.stop(0)


async def test_refreshes_before_expiry(stack):
    client, identity, recorder = stack
    await client.login("ada@example.com", "correct horse", refresh_margin=60)
    session = client.credentials
    now = [time.time()]
    session._clock = lambda: now[0]
    first_access, first_refresh = session.access_token, session.refresh_token
    await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    now[0] = session.expires_at - 120  # plenty left: no refresh
    await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    assert identity.refresh_calls == [] and recorder.tokens == [first_access, first_access]
    now[0] = session.expires_at - 30  # inside the margin, still valid: refreshed before it expires
    await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    assert identity.refresh_calls == [first_refresh]
    assert recorder.tokens[-1] == session.access_token != first_access
    assert session.refresh_token != first_refresh  # rotated


async def test_concurrent_calls_refresh_once(stack):
    client, identity, recorder = stack
    await client.login("ada@example.com", "correct horse")
    session = client.credentials
    session._clock = lambda: session.expires_at - 10
    await asyncio.gather(*[client.authz_stub.GetCatalog(apb.GetCatalogRequest()) for _ in range(8)])
    assert len(identity.refresh_calls) == 1  # a refresh token is single-use: never replayed
    assert len(set(recorder.tokens)) == 1


async def test_revoked_refresh_token_logs_in_again(stack):
    client, identity, _ = stack
    await client.login("ada@example.com", "correct horse")
    session = client.credentials
    identity.live_refresh.clear()  # the session was revoked server-side
    session._clock = lambda: session.expires_at + 1  # and the access token expired
    await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    assert identity.logins == 2 and len(identity.refresh_calls) == 1


async def test_wrong_password_is_refused(stack):
    client, _, _ = stack
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.login("ada@example.com", "wrong")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert client.credentials is None


async def test_a_refused_token_is_renewed_once_and_the_call_sent_again(stack):
    client, identity, recorder = stack
    await client.login("ada@example.com", "correct horse")
    session = client.credentials
    refused = session.access_token
    recorder.refused.add(refused)
    await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    assert recorder.calls == 2 and len(identity.refresh_calls) == 1
    assert recorder.tokens == [session.access_token] and session.access_token != refused
    # a refusal that a new token does not cure is returned after one renewal, not looped on
    recorder.refused.add(session.access_token)
    identity.live_refresh.clear()
    session._password = None  # no way to log in again
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert recorder.calls == 3
