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
from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.testing.tokens import TokenMint
from services.authz.tests.helpers import (
    check_req,
    seen_at_revision,
    start_authz,
    touch,
    unreached_revision_is_unavailable,
)


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
    await seen_at_revision(a, b, svc, "u1")
    await seen_at_revision(b, a, svc, "u2")


async def test_a_revision_that_never_arrives_is_unavailable_within_the_deadline(replicas):
    (a, b), svc, _ = replicas
    await unreached_revision_is_unavailable(a, b, svc)


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


@pytest.fixture
def two_processes(tmp_path, database_url):
    """Two authz servers as real OS processes (``bench/authz_server.py authz``: the production
    ``build`` trusting a test key instead of identity's JWKS) on one database."""
    import json
    import os
    import pathlib
    import selectors
    import subprocess
    import sys

    from gatehouse.kit.keys import public_jwk
    from gatehouse.kit.migrations import upgrade_to_head
    from gatehouse_authz.server import MIGRATIONS

    upgrade_to_head(MIGRATIONS, database_url)  # once, before two processes race to migrate
    mint = TokenMint()
    script = pathlib.Path(__file__).resolve().parents[3] / "bench" / "authz_server.py"
    procs, ports = [], []
    try:
        for name in ("a", "b"):
            env = {
                **os.environ,
                "BENCH_JWK": json.dumps(public_jwk(mint.key)),
                "GATEHOUSE_LISTEN_ADDRESS": "127.0.0.1:0",
                "GATEHOUSE_DATA_DIR": str(tmp_path / name),
                "GATEHOUSE_DATABASE_URL": database_url,
            }
            proc = subprocess.Popen(
                [sys.executable, str(script), "authz"], env=env, stdout=subprocess.PIPE, text=True
            )
            procs.append(proc)
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(60), "authz process did not start"
            ports.append(json.loads(proc.stdout.readline())["port"])
        yield ports, mint.md(mint.service())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def test_two_processes_on_one_database(two_processes):
    (port_a, port_b), svc = two_processes
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port_a}") as ca,
        grpc.aio.insecure_channel(f"127.0.0.1:{port_b}") as cb,
    ):
        a, b = authz_service_pb2_grpc.AuthzServiceStub(ca), authz_service_pb2_grpc.AuthzServiceStub(cb)
        await seen_at_revision(a, b, svc, "p1")
        await seen_at_revision(b, a, svc, "p2")
        await unreached_revision_is_unavailable(a, b, svc)
