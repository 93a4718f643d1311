"""The kit side of revocations (RevocationPoller) and concurrent refresh races on both databases."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit import errors
from gatehouse.kit.auth import RevocationPoller
from gatehouse.kit.peers import revocations_fetcher
from services.identity.tests.helpers import fails


async def test_poller_fails_closed_until_first_sync_then_keeps_last_list():
    calls = {"n": 0, "fail": True}

    async def fetch(after: int):
        calls["n"] += 1
        if calls["fail"]:
            raise ConnectionError("identity down")
        return [("s1", time.time() + 60, 1)] if after < 1 else []

    poller = RevocationPoller(fetch, interval=0.05, initial_wait=0.3)
    with pytest.raises(errors.Unavailable):
        await poller.is_revoked("s1")
    calls["fail"] = False
    await asyncio.sleep(0.15)
    assert await poller.is_revoked("s1") and not await poller.is_revoked("s2")
    calls["fail"] = True  # identity goes away again: the known list keeps working
    await asyncio.sleep(0.15)
    assert await poller.is_revoked("s1")
    await poller.stop()


async def test_grpc_feed_pages_and_resumes(identity):
    user_id = await identity.create_user("rev@example.com")
    sessions = [await identity.login_response("rev@example.com") for _ in range(5)]
    for s in sessions:
        await identity.stub.Logout(pb.LogoutRequest(refresh_token=s.refresh_token))
    token = await identity.service_token("gateway")

    async def token_source():
        return token

    fetch = revocations_fetcher(identity.channel, token_source, page_size=2)
    entries = await fetch(0)
    assert [e[0] for e in entries] == [s.session_id for s in sessions]
    assert [e[2] for e in entries] == sorted(e[2] for e in entries)
    assert await fetch(entries[-1][2]) == []
    assert all(e[1] > time.time() + 800 for e in entries)  # published for the access-token lifetime
    del user_id


async def test_concurrent_refresh_with_one_token_lets_only_one_win(identity):
    await identity.create_user("race@example.com")
    login = await identity.login_response("race@example.com")
    request = pb.RefreshSessionRequest(refresh_token=login.refresh_token)
    results = await asyncio.gather(
        *(identity.stub.RefreshSession(request) for _ in range(3)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 2
    assert all(e.code() == grpc.StatusCode.UNAUTHENTICATED for e in losers)
    # a second use was detected as reuse: the whole session is gone, the winner's token too
    await fails(
        identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=winners[0].refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_housekeeping_purges_only_what_can_no_longer_matter(identity):
    await identity.create_user("old@example.com")
    login = await identity.login_response("old@example.com")
    await identity.stub.Logout(pb.LogoutRequest(refresh_token=login.refresh_token))
    await fails(identity.login("old@example.com", "wrong-password-xyz"), grpc.StatusCode.UNAUTHENTICATED)
    svc = await identity.service_metadata("authz")
    async with identity.identity.store.transaction() as tx:
        assert await tx.purge_expired(time.time(), throttle_window=900) == 0  # everything still matters
    later = time.time() + 40 * 86400  # long after every token, lock and session expired
    async with identity.identity.store.transaction() as tx:
        assert await tx.purge_expired(later, throttle_window=900) >= 3  # revocation, throttle, refresh token
        await tx.commit()
    assert (
        list((await identity.stub.ListRevocations(pb.ListRevocationsRequest(), metadata=svc)).revocations)
        == []
    )
