"""GatehouseClient against the REAL identity (and authz): login, refresh before expiry, service accounts."""

from __future__ import annotations

import time

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.client import AuthzClient, AuthzUnavailable, GatehouseClient, ServiceAccountCredentials
from gatehouse.client.testing import touch
from gatehouse.identity.v1 import identity_service_pb2 as ipb
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity


@pytest.fixture
async def identity(tmp_path):
    async with running_identity(tmp_path, with_authz=True) as harness:
        yield harness


async def test_login_then_refresh_before_expiry(identity):
    user_id = await identity.create_user("ada@example.com")
    async with GatehouseClient({"identity": identity.address, "authz": identity.authz_address}) as client:
        answer = await client.login("ada@example.com", DEFAULT_PASSWORD, refresh_margin=60)
        assert client.user_id == user_id == answer.user.id
        session = client.credentials
        first_access, first_refresh = session.access_token, session.refresh_token
        # the access token works against authz (a user may ask about themselves)
        assert not (await client.authz.check(f"user:{user_id}", "workspace:w", "chat")).allowed
        # shortly before expiry the next call refreshes first (identity rotates the refresh token)
        session._clock = lambda: session.expires_at - 30
        await client.authz_stub.GetCatalog(apb.GetCatalogRequest())
        assert session.refreshes == 1
        assert session.access_token != first_access and session.refresh_token != first_refresh
        session._clock = time.time
        # the old refresh token is used up: identity refuses it
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity.stub.RefreshSession(ipb.RefreshSessionRequest(refresh_token=first_refresh))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_password_is_unauthenticated(identity):
    await identity.create_user("bo@example.com")
    async with GatehouseClient({"identity": identity.address}) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.login("bo@example.com", "not the password")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_service_account_credentials(identity):
    creds = await identity.credentials_for("notes")
    async with GatehouseClient({"identity": identity.address, "authz": identity.authz_address}) as client:
        client.use_service_account(creds.client_id, creds.client_secret)
        revision = await client.authz.write(touch("workspace:w#viewer@user:someone"))
        assert (await client.authz.check("user:someone", "workspace:w", "chat")).allowed
        assert client.authz.revision_floor == revision
    # wrong secret: the token source cannot get a token, and authz calls fail closed
    async with (
        grpc.aio.insecure_channel(identity.address) as ich,
        grpc.aio.insecure_channel(identity.authz_address) as ach,
    ):
        bad = ServiceAccountCredentials(ich, creds.client_id, "wrong-secret")
        with pytest.raises(AuthzUnavailable) as info:
            await AuthzClient(ach, token_source=bad).check("user:someone", "workspace:w", "chat")
        assert "no credentials" in info.value.message
