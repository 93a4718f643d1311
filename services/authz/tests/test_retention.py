"""Retention of the change log and of idempotency keys, through real servers (SQLite and
PostgreSQL): what a watcher behind the horizon is told, and the server's own pruning job."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import sqlalchemy as sa

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.kit.config import ConfigError
from gatehouse.kit.db import Database
from gatehouse.kit.outbox import DELIVERED_KEEP
from gatehouse.kit.status import bad_request, error_info
from gatehouse.testing.tokens import TokenMint
from gatehouse_authz.adapters.store import ChangeLogCompacted, Store
from gatehouse_authz.adapters.tables import outbox
from gatehouse_authz.server import (
    CHANGELOG_RETENTION_VARIABLE,
    PRUNE_INTERVAL_VARIABLE,
    REQUEST_ID_RETENTION_VARIABLE,
    Retention,
)
from services.authz.tests.helpers import start_authz, touch


async def _write(stub, svc, text: str, request_id: str = "") -> int:
    request = pb.WriteRelationshipsRequest(updates=touch(text), request_id=request_id)
    return (await stub.WriteRelationships(request, metadata=svc)).revision


async def _prune_all_but_newest(database_url: str) -> None:
    db = Database(database_url)
    try:
        await Store(db).prune(changes_before=time.time() + 60, requests_before=0)
    finally:
        await db.dispose()


async def test_a_watch_from_before_the_horizon_is_refused_with_the_horizon(authz):
    stub, _, svc, database_url = authz
    for user in ("a", "b", "c", "d"):
        head = await _write(stub, svc, f"workspace:w#viewer@user:{user}")
    await _prune_all_but_newest(database_url)

    call = stub.Watch(pb.WatchRequest(since_revision=head - 2), metadata=svc)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(call.read(), 5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info.reason == "REVISION_COMPACTED"
    assert dict(info.metadata) == {"since_revision": str(head - 2), "oldest_revision": str(head)}
    assert "ReadRelationships" in refused.value.details()

    # From the horizon on, the stream works as before.
    call = stub.Watch(pb.WatchRequest(since_revision=head - 1), metadata=svc)
    try:
        message = await asyncio.wait_for(call.read(), 5)
        assert message.revision == head and [c.update.relationship.subject.id for c in message.changes] == [
            "d"
        ]
    finally:
        call.cancel()


async def test_a_negative_since_revision_is_invalid(authz):
    stub, _, svc, _ = authz
    call = stub.Watch(pb.WatchRequest(since_revision=-1), metadata=svc)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(call.read(), 5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_request(refused.value).field_violations] == ["since_revision"]


async def test_the_server_prunes_on_its_interval(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv(PRUNE_INTERVAL_VARIABLE, "0.1")
    monkeypatch.setenv(CHANGELOG_RETENTION_VARIABLE, "0.000001")  # 3.6 ms
    monkeypatch.setenv(REQUEST_ID_RETENTION_VARIABLE, "0.000001")
    mint = TokenMint()
    server, port = await start_authz(tmp_path, database_url, mint)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub, svc = authz_service_pb2_grpc.AuthzServiceStub(channel), mint.md(mint.service())
    db = Database(database_url)
    try:
        first = await _write(stub, svc, "workspace:w#viewer@user:a", request_id="once")
        head = await _write(stub, svc, "workspace:w#viewer@user:b")
        store = Store(db)
        deadline = time.monotonic() + 10
        while True:  # the job runs every 0.1 s; on a busy machine give it a while
            try:
                await store.changes_since(first - 1)
            except ChangeLogCompacted as gone:
                assert gone.oldest == head
                break
            assert time.monotonic() < deadline, "the change log was never pruned"
            await asyncio.sleep(0.05)
        # the idempotency key went too: the same request id is a new write now
        assert await _write(stub, svc, "workspace:w#viewer@user:a", request_id="once") == head + 1
        # and checks still answer from the index (pruning never touches relationships)
        check = pb.CheckCapabilityRequest(capability="chat")
        check.subject.type, check.subject.id = "user", "b"
        check.resource.type, check.resource.id = "workspace", "w"
        assert (await stub.CheckCapability(check, metadata=svc)).allowed
        # audit events delivered more than a week ago leave the outbox; younger ones stay
        async with db.unit_of_work() as uow:
            ids = [r.id for r in await uow.session.execute(sa.select(outbox.c.id).order_by(outbox.c.id))]
            assert len(ids) >= 2  # one audit event per write
            now = time.time()
            for entry_id, age in ((ids[0], DELIVERED_KEEP + 3600), (ids[1], 86400)):
                await uow.session.execute(
                    outbox.update().where(outbox.c.id == entry_id).values(delivered_at=now - age)
                )
            await uow.commit()
        deadline = time.monotonic() + 10
        while True:
            async with db.unit_of_work() as uow:
                left = {r.id for r in await uow.session.execute(sa.select(outbox.c.id))}
            if ids[0] not in left:
                break
            assert time.monotonic() < deadline, "the old delivered audit event was never purged"
            await asyncio.sleep(0.05)
        assert ids[1] in left
    finally:
        await channel.close()
        await server.stop(0)
        await db.dispose()


def test_retention_settings_default_and_are_validated():
    assert Retention.from_env({}) == Retention(changelog_hours=168.0, request_id_hours=24.0, interval=3600.0)
    assert Retention.from_env(
        {CHANGELOG_RETENTION_VARIABLE: "2.5", PRUNE_INTERVAL_VARIABLE: "60"}
    ) == Retention(changelog_hours=2.5, request_id_hours=24.0, interval=60.0)
    for var in (CHANGELOG_RETENTION_VARIABLE, REQUEST_ID_RETENTION_VARIABLE, PRUNE_INTERVAL_VARIABLE):
        for bad in ("week", "0", "-1", "inf", "nan"):
            with pytest.raises(ConfigError, match=var):
                Retention.from_env({var: bad})
