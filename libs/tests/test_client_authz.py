"""AuthzClient against a real authz server (SQLite and PostgreSQL): cache, revisions, fail-closed."""

from __future__ import annotations

import time

import grpc
import pytest

from gatehouse.authz.v1 import relationship_pb2
from gatehouse.client import AuthzClient, AuthzUnavailable, StaticToken
from gatehouse.client.testing import active, start_authz, touch
from gatehouse.kit import errors
from gatehouse.testing.tokens import TokenMint


@pytest.fixture
async def authz(tmp_path, database_url):
    mint = TokenMint()
    server, address = await start_authz(tmp_path / "authz", database_url, mint.verifier)
    channels = []

    def client(**kwargs) -> AuthzClient:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        kwargs.setdefault("token_source", StaticToken(mint.service("notes")))
        kwargs.setdefault("timeout", 2.0)  # generous: the machine running the tests may be busy
        kwargs.setdefault("cache_ttl", 60.0)  # long: only revisions may bypass it in these tests
        return AuthzClient(channel, **kwargs)

    writer = client()
    await writer.write(
        touch(
            "workspace:w#parent@organization:o",
            "dataset:d#parent@workspace:w",
            "workspace:w#admin@user:alice",
            "workspace:w#viewer@user:bob",
            *[f"workspace:w{i:02d}#viewer@user:bob" for i in range(12)],
            "organization:o#member@user:bob",
        )
        + [active("o", "alice"), active("o", "bob")]
    )
    yield server, client, writer, mint
    for channel in channels:
        await channel.close()
    await server.stop(0)


async def test_check_access_lookup_and_batch(authz):
    _, _, client, _ = authz
    assert (await client.check("user:alice", ("workspace", "w"), "manage:members")).allowed
    denied = await client.check("user:bob", "workspace:w", "manage:members")
    assert not denied.allowed and denied.reason == "NO_RELATIONSHIP"
    results = await client.check_many(
        [
            ("user:bob", "dataset:d", "read"),
            ("user:bob", "dataset:d", "write"),
            ("user:alice", "dataset:d", "delete"),
        ]
    )
    assert [r.allowed for r in results] == [True, False, True]
    access = await client.access("user:bob", "workspace:w")
    assert access.effective_role == "viewer" and "chat" in access.capabilities
    ids = await client.lookup("user:bob", "workspace", "chat", page_size=5)
    assert ids == sorted(["w", *[f"w{i:02d}" for i in range(12)]])
    with pytest.raises(errors.PermissionDenied):
        await client.require("user:bob", "workspace:w", "manage:members")
    assert await client.organization_of("dataset:d") == "o"
    assert await client.organization_of("dataset:nope") is None


async def test_cache_answers_repeated_checks(authz):
    _, make, _, _ = authz
    client = make()
    for _ in range(5):
        assert (await client.check("user:bob", "dataset:d", "read")).allowed
    assert (client.cache.hits, client.cache.misses) == (4, 1)
    # batch checks reuse cached answers and cache theirs
    await client.check_many([("user:bob", "dataset:d", "read"), ("user:bob", "dataset:d", "write")])
    assert client.cache.hits == 5
    assert not (await client.check("user:bob", "dataset:d", "write")).allowed
    assert client.cache.hits == 6


async def test_write_revision_bypasses_the_cache(authz):
    _, make, _, _ = authz
    client, elsewhere = make(), make()
    assert not (await client.check("user:bob", "workspace:w", "manage:members")).allowed
    assert not (await elsewhere.check("user:bob", "workspace:w", "manage:members")).allowed
    # bob is promoted to admin; the writer's next check must see it although the denial is cached
    revision = await client.write(touch("workspace:w#admin@user:bob"))
    assert client.revision_floor == revision
    decision = await client.check("user:bob", "workspace:w", "manage:members")
    assert decision.allowed and decision.revision >= revision
    # a client that did not learn the revision still answers from its cache (within the TTL) ...
    assert not (await elsewhere.check("user:bob", "workspace:w", "manage:members")).allowed
    # ... until it observes the revision (e.g. handed over by whoever wrote)
    elsewhere.observe_revision(revision)
    assert (await elsewhere.check("user:bob", "workspace:w", "manage:members")).allowed
    # and a removal is seen just the same
    revision = await client.delete(
        relationship_pb2.RelationshipFilter(
            resource_type="workspace",
            resource_id="w",
            relation="admin",
            subject_type="user",
            subject_id="bob",
        )
    )
    assert not (await client.check("user:bob", "workspace:w", "manage:members")).allowed
    assert (
        await elsewhere.check("user:bob", "workspace:w", "manage:members", at_least_revision=revision)
    ).allowed is False


async def test_cache_entries_expire(authz):
    _, make, writer, _ = authz
    now = [1000.0]
    client = make(cache_ttl=1.0, clock=lambda: now[0])
    assert not (await client.check("user:bob", "dataset:d", "write")).allowed
    await writer.write(touch("workspace:w#member@user:bob"))
    assert not (await client.check("user:bob", "dataset:d", "write")).allowed  # cached
    now[0] += 1.5
    for _ in range(50):  # authz applied the write already; without a revision it answers from current state
        if (await client.check("user:bob", "dataset:d", "write")).allowed:
            break
        now[0] += 1.5
    else:
        pytest.fail("the expired entry was never refreshed")


async def _eventually(condition, timeout: float = 5.0) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_follow_changes_invalidates_without_a_revision(authz):
    import asyncio

    server, make, writer, _ = authz
    client = make()
    assert not (await client.check("user:bob", "dataset:d", "delete")).allowed
    follower = asyncio.create_task(client.follow_changes(retry_delay=0.05))
    try:
        assert await _eventually(lambda: client.coherent)
        revision = await writer.write(touch("workspace:w#admin@user:bob"))
        assert await client.wait_for_revision(revision, timeout=5.0)
        assert (await client.check("user:bob", "dataset:d", "delete")).allowed
        hits = client.cache.hits
        assert (await client.check("user:bob", "dataset:d", "delete")).allowed
        assert client.cache.hits == hits + 1  # a live stream keeps the cache in use
        # authz goes away: the stream breaks and the cached allow is no longer served
        await server.stop(0)
        assert await _eventually(lambda: not client.coherent)
        with pytest.raises(AuthzUnavailable):
            await client.check("user:bob", "dataset:d", "delete")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_follow_changes_resumes_past_a_compacted_change_log(authz, database_url):
    """A floor older than authz's change-log retention: the stream is refused (REVISION_COMPACTED);
    the client raises its floor to authz's head (no answer cached before it is used again) and
    follows from there instead of retrying the refused revision forever."""
    import asyncio

    from gatehouse.kit.db import Database
    from gatehouse_authz.adapters.store import Store

    _, make, writer, _ = authz
    for i in range(3):
        head = await writer.write(touch(f"workspace:w#viewer@user:c{i}"))
    db = Database(database_url)
    try:
        await Store(db).prune(changes_before=time.time() + 60, requests_before=0)  # keeps only `head`
    finally:
        await db.dispose()
    client = make()
    client.observe_revision(head - 1)  # Watch(since=head - 2): before the horizon
    follower = asyncio.create_task(client.follow_changes(retry_delay=0.05))
    try:
        assert await _eventually(lambda: client.coherent)
        assert client.revision_floor >= head
        revision = await writer.write(touch("workspace:w#admin@user:bob"))
        assert await client.wait_for_revision(revision, timeout=5.0)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_fails_closed_when_authz_is_down(authz):
    server, make, _, _ = authz
    client = make(timeout=0.3)
    await server.stop(0)
    started = time.monotonic()
    for call in (
        client.check("user:alice", "workspace:w", "chat"),
        client.check_many([("user:alice", "workspace:w", "chat")]),
        client.access("user:alice", "workspace:w"),
        client.lookup("user:alice", "workspace", "chat"),
    ):
        with pytest.raises(AuthzUnavailable) as info:
            await call
        assert info.value.code == "UNAVAILABLE" and info.value.authz_code in (
            "UNAVAILABLE",
            "DEADLINE_EXCEEDED",
        )
    assert time.monotonic() - started < 3.0
    assert len(client.cache) == 0  # errors are never cached


async def test_unknown_capability_is_not_an_allow(authz):
    _, _, client, _ = authz
    with pytest.raises(AuthzUnavailable) as info:
        await client.check("user:alice", "workspace:w", "fly:away")
    assert info.value.authz_code == "INVALID_ARGUMENT"
