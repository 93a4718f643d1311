"""Two authz servers on one database stay in step (LISTEN/NOTIFY on PostgreSQL, polling on SQLite).

Both are complete, separate servers in this test process — own gRPC port, own connection
pool, own in-memory index and follower — sharing only the database, as two replicas do.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import authz_service_pb2_grpc, decision_pb2
from gatehouse.kit.status import error_info
from gatehouse.testing.tokens import TokenMint
from services.authz.tests.helpers import check_req, start_authz, touch


@pytest.fixture
async def replicas(tmp_path, database_url):
    mint = TokenMint()
    servers, channels = [], []
    for name in ("a", "b"):
        server, port = await start_authz(tmp_path, database_url, mint, name=name)
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    yield [authz_service_pb2_grpc.AuthzServiceStub(c) for c in channels], mint.md(mint.service()), servers
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def write(stub, svc, *texts) -> int:
    return (
        await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=touch(*texts)), metadata=svc)
    ).revision


async def test_a_write_through_one_is_seen_by_the_other_at_its_revision(replicas):
    (a, b), svc, _ = replicas
    for writer, reader, user in ((a, b, "u1"), (b, a, "u2")):
        revision = await write(writer, svc, f"workspace:w#admin@user:{user}")
        answer = await reader.CheckCapability(
            check_req(
                user,
                "workspace:w",
                "manage:members",
                consistency=decision_pb2.Consistency(at_least_revision=revision),
            ),
            metadata=svc,
            timeout=2,
        )
        assert answer.allowed and answer.revision >= revision


async def test_a_revision_that_never_arrives_is_unavailable_within_the_deadline(replicas):
    (a, b), svc, _ = replicas
    revision = await write(a, svc, "workspace:w#viewer@user:u")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await b.CheckCapability(
            check_req(
                "u",
                "workspace:w",
                "chat",
                consistency=decision_pb2.Consistency(at_least_revision=revision + 50),
            ),
            metadata=svc,
            timeout=0.5,
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(info.value).reason == "REVISION_NOT_REACHED"
    assert time.monotonic() - started < 0.5 + 0.3


async def test_without_a_revision_the_other_replica_converges_quickly(replicas):
    (a, b), svc, _ = replicas
    lags = []
    for i in range(10):
        await write(a, svc, f"workspace:w#viewer@user:r{i}")
        started = time.monotonic()
        for _ in range(200):
            if (await b.CheckCapability(check_req(f"r{i}", "workspace:w", "chat"), metadata=svc)).allowed:
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("the replica never saw the write")
        lags.append(time.monotonic() - started)
    # PostgreSQL: woken by NOTIFY (its fallback poll is 1 s); SQLite: polled every 50 ms.
    assert max(lags) < 0.9, lags
