"""What a caller cannot get wrong or probe, through real servers with real tokens, on SQLite and
PostgreSQL: another tenant's object is NOT_FOUND even on the grantee checks, relationships the
index would not hold are refused at the door, filters given by halves are refused, long values
are field violations (not INTERNAL), a disabled platform admin is no platform admin in GetAccess,
and Watch's type filter keeps the states that change a watched type's decisions.

(Found by a review against issue 4; each test fails on the code before its fix.)"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import sqlalchemy as sa

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import decision_pb2, relationship_pb2
from gatehouse.kit.db import Database
from gatehouse.kit.status import bad_request
from services.authz.tests.helpers import Op, active, check_req, touch
from services.authz.tests.test_rules import ref, state_update, sub, write

R = decision_pb2


async def violations(coro) -> list[tuple[str, str]]:
    """The field violations of an INVALID_ARGUMENT answer (fails on any other outcome)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return [(v.field, v.description) for v in bad_request(info.value).field_violations]


async def two_tenants(stub, svc) -> int:
    return await write(
        stub,
        svc,
        "workspace:w#parent@organization:o",
        "dataset:d#parent@workspace:w",
        "group:g#parent@organization:o",
        "workspace:z#parent@organization:o2",
        "dataset:dz#parent@workspace:z",
        "group:gz#parent@organization:o2",
        "organization:o2#owner@user:owner2",
        extra=[active("o", "u"), active("o2", "owner2")],
    )


async def test_granting_another_tenants_object_is_not_found_whoever_the_grantee(authz):
    # The grantee's organization rule used to answer first, telling the owner of o2 that
    # dataset:d exists and belongs to another organization; an unknown id said NOT_FOUND.
    stub, mint, svc, _ = authz
    await two_tenants(stub, svc)
    owner2 = mint.md(mint.user("owner2"))
    for resource in ("dataset:d", "dataset:nope"):
        for grantee in ("organization:o2", "group:gz", "user:owner2"):
            for rpc, request in (
                (stub.GrantCapability, pb.GrantCapabilityRequest),
                (stub.RevokeCapability, pb.RevokeCapabilityRequest),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await rpc(
                        request(resource=ref(resource), capability="read", subject=sub(grantee)),
                        metadata=owner2,
                    )
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, (resource, grantee)
    # the grantee rule itself still holds for a caller who may share the object
    assert await violations(
        stub.GrantCapability(
            pb.GrantCapabilityRequest(resource=ref("dataset:dz"), capability="read", subject=sub("group:g")),
            metadata=owner2,
        )
    ) == [("subject.id", "a group can be granted only objects of its own organization")]


async def test_capability_on_a_role_is_refused_so_a_delete_cannot_leave_it_in_the_store(authz):
    # The index ignored the capability of a role binding, the store kept it in the row's key:
    # a bulk delete removed the binding from the index but not the row, and a restarted replica
    # allowed again what had been revoked.
    stub, _, svc, url = authz
    role = relationship_pb2.Relationship(
        resource=ref("workspace:w"), relation="admin", subject=sub("user:u"), capability="chat"
    )
    parent = relationship_pb2.Relationship(
        resource=ref("workspace:w"), relation="parent", subject=sub("organization:o"), capability="chat"
    )
    updates = [
        relationship_pb2.RelationshipUpdate(operation=Op.OPERATION_TOUCH, relationship=r)
        for r in (role, parent)
    ]
    assert await violations(
        stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=updates), metadata=svc)
    ) == [
        ("updates[0].relationship.capability", "only a grant carries a capability"),
        ("updates[1].relationship.capability", "only a grant carries a capability"),
    ]
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.text("select count(*) from relationships"))).scalar()
    finally:
        await db.engine.dispose()
    assert rows == 0  # nothing was written


async def test_a_role_bound_to_an_organization_is_refused(authz):
    # An organization principal passes its grants to its members; a role bound to it was stored
    # and then ignored by every check.
    stub, _, svc, _ = authz
    assert await violations(write(stub, svc, "workspace:w#viewer@organization:o")) == [
        (
            "updates[0].relationship.subject.type",
            "an organization holds grants, not roles (relation grant, or GrantCapability)",
        )
    ]
    await write(stub, svc, "dataset:d#grant:read@organization:o", "workspace:w#parent@organization:o")


async def test_filters_need_the_type_of_an_id(authz):
    # `subject_id` alone matched a user and a group of that id alike: a delete meant for one
    # removed both.
    stub, _, svc, _ = authz
    await write(stub, svc, "workspace:w#admin@user:x", "workspace:w#viewer@group:x")
    F = relationship_pb2.RelationshipFilter
    assert await violations(
        stub.DeleteRelationships(pb.DeleteRelationshipsRequest(filter=F(subject_id="x")), metadata=svc)
    ) == [("filter.subject_type", "is required with subject_id")]
    assert await violations(
        stub.ReadRelationships(pb.ReadRelationshipsRequest(filter=F(resource_id="w")), metadata=svc)
    ) == [("filter.resource_type", "is required with resource_id")]
    precondition = relationship_pb2.Precondition(
        operation=relationship_pb2.Precondition.OPERATION_MUST_NOT_EXIST, filter=F(subject_id="x")
    )
    assert await violations(
        stub.WriteRelationships(
            pb.WriteRelationshipsRequest(
                updates=touch("workspace:w#viewer@user:y"), preconditions=[precondition]
            ),
            metadata=svc,
        )
    ) == [("preconditions[0].filter.subject_type", "is required with subject_id")]
    left = await stub.ReadRelationships(
        pb.ReadRelationshipsRequest(filter=F(resource_type="workspace", resource_id="w")), metadata=svc
    )
    assert sorted((r.relation, r.subject.type) for r in left.relationships) == [
        ("admin", "user"),
        ("viewer", "group"),
    ]
    done = await stub.DeleteRelationships(
        pb.DeleteRelationshipsRequest(filter=F(subject_type="group", subject_id="x")), metadata=svc
    )
    assert done.deleted_count == 1


async def test_lookup_parent_needs_type_and_id_of_a_known_type(authz):
    # `parent` with only a type was dropped (both organizations' workspaces listed); with only an
    # id or an unknown type it matched nothing, answered OK.
    stub, _, svc, _ = authz
    await write(
        stub,
        svc,
        "workspace:w#parent@organization:o",
        "workspace:z#parent@organization:o2",
        "workspace:w#admin@user:u",
        "workspace:z#admin@user:u",
        extra=[active("o", "u"), active("o2", "u")],
    )

    def lookup(parent):
        return stub.LookupResources(
            pb.LookupResourcesRequest(
                subject=sub("user:u"), resource_type="workspace", capability="chat", parent=parent
            ),
            metadata=svc,
        )

    assert list((await lookup(ref("organization:o"))).resource_ids) == ["w"]
    assert sorted((await lookup(None)).resource_ids) == ["w", "z"]
    P = type(ref("organization:o"))
    assert await violations(lookup(P(type="organization"))) == [("parent.id", "is required")]
    assert await violations(lookup(P(id="o"))) == [("parent.type", "is required")]
    assert await violations(lookup(P(type="galaxy", id="o"))) == [
        ("parent.type", "unknown resource type 'galaxy'")
    ]


async def test_long_ids_and_request_ids_are_field_violations(authz):
    # On PostgreSQL they overflowed the columns: INTERNAL; on SQLite they were stored.
    stub, _, svc, _ = authz
    long_id = "x" * 129
    assert await violations(write(stub, svc, f"workspace:{long_id}#viewer@user:{long_id}")) == [
        ("updates[0].relationship.resource.id", "must be at most 128 characters"),
        ("updates[0].relationship.subject.id", "must be at most 128 characters"),
    ]
    assert await violations(
        stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=[active(long_id, "u")]), metadata=svc)
    ) == [("updates[0].membership_state.organization_id", "must be at most 128 characters")]
    assert await violations(
        stub.WriteRelationships(
            pb.WriteRelationshipsRequest(
                updates=[
                    state_update(subject_state=relationship_pb2.SubjectState(subject=sub(f"user:{long_id}")))
                ]
            ),
            metadata=svc,
        )
    ) == [("updates[0].subject_state.subject.id", "must be at most 128 characters")]
    assert await violations(write(stub, svc, "workspace:w#viewer@user:u", request_id="r" * 101)) == [
        ("request_id", "must be at most 100 characters")
    ]
    # the longest accepted values are stored and read back on both databases
    longest = "y" * 128
    revision = await write(stub, svc, f"workspace:{longest}#viewer@user:{longest}", request_id="r" * 100)
    again = await write(stub, svc, f"workspace:{longest}#viewer@user:{longest}", request_id="r" * 100)
    assert again == revision  # the same request: the first call's revision
    answer = await stub.CheckCapability(
        check_req(
            longest, f"workspace:{longest}", "chat", consistency=R.Consistency(at_least_revision=revision)
        ),
        metadata=svc,
    )
    assert answer.allowed


async def test_get_access_says_a_disabled_platform_admin_is_not_one(authz):
    stub, _, svc, _ = authz
    await write(
        stub,
        svc,
        "platform:platform#platform_admin@user:root",
        "workspace:w#parent@organization:o",
        extra=[
            state_update(subject_state=relationship_pb2.SubjectState(subject=sub("user:root"), disabled=True))
        ],
    )
    for resource in ("workspace:w", "platform:platform"):
        access = await stub.GetAccess(
            pb.GetAccessRequest(subject=sub("user:root"), resource=ref(resource)), metadata=svc
        )
        assert not access.is_platform_admin and not access.capabilities, resource
    enabled = state_update(
        subject_state=relationship_pb2.SubjectState(subject=sub("user:root"), disabled=False)
    )
    await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=[enabled]), metadata=svc)
    access = await stub.GetAccess(
        pb.GetAccessRequest(subject=sub("user:root"), resource=ref("workspace:w")), metadata=svc
    )
    assert access.is_platform_admin and "delete:workspace" in access.capabilities


async def test_watch_type_filter_keeps_the_states_that_change_those_types_decisions(authz):
    # With resource_types set, every state change was dropped: a cache of workspace decisions never
    # learned that a workspace was deleted or a user disabled, and kept allowing.
    stub, _, svc, _ = authz
    first = await write(stub, svc, "workspace:w#viewer@user:a")
    call = stub.Watch(pb.WatchRequest(since_revision=first, resource_types=["workspace"]), metadata=svc)
    try:
        changes = []
        for update in (
            state_update(
                resource_state=relationship_pb2.ResourceState(resource=ref("workspace:w"), deleted=True)
            ),
            state_update(
                resource_state=relationship_pb2.ResourceState(resource=ref("dataset:d"), deleted=True)
            ),
            state_update(subject_state=relationship_pb2.SubjectState(subject=sub("user:a"), disabled=True)),
            active("o", "a"),
            state_update(resource_settings=relationship_pb2.ResourceSettings(resource=ref("organization:o"))),
        ):
            await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=[update]), metadata=svc)
        last = await write(stub, svc, "workspace:w#viewer@user:b")
        while not changes or changes[-1].revision < last:
            message = await asyncio.wait_for(call.read(), 5)
            changes.extend(message.changes)
        kinds = [c.update.WhichOneof("item") for c in changes]
        # the workspace's deletion, the user's and the membership's states; not the dataset's
        # deletion nor the organization's settings (other types)
        assert kinds == ["resource_state", "subject_state", "membership_state", "relationship"]
        assert changes[0].update.resource_state.resource.id == "w"
    finally:
        call.cancel()


async def test_a_bulk_delete_among_concurrent_writes_does_not_stall_them(authz):
    # DeleteRelationships caught the index up (the follower's lock and a second pooled connection)
    # while holding the revision lock the other writes queue on, each holding a connection: with
    # 24 writers the pool ran dry and everything waited for its 30 s timeout (60 s on PostgreSQL).
    stub, _, svc, _ = authz
    await write(stub, svc, *(f"workspace:d#viewer@user:x{i}" for i in range(5)))
    stop = time.monotonic() + 2.5
    latencies: list[float] = []

    async def writer(k: int) -> None:
        n = 0
        while time.monotonic() < stop:
            started = time.monotonic()
            await stub.WriteRelationships(
                pb.WriteRelationshipsRequest(updates=touch(f"workspace:w{k}#viewer@user:u{n}")),
                metadata=svc,
                timeout=20,
            )
            latencies.append(time.monotonic() - started)
            n += 1

    writers = [asyncio.create_task(writer(k)) for k in range(24)]
    try:
        await asyncio.sleep(0.8)
        started = time.monotonic()
        done = await stub.DeleteRelationships(
            pb.DeleteRelationshipsRequest(
                filter=relationship_pb2.RelationshipFilter(resource_type="workspace", resource_id="d"),
                request_id="bulk",
            ),
            metadata=svc,
            timeout=20,
        )
        took = time.monotonic() - started
    finally:
        await asyncio.gather(*writers)
    assert done.deleted_count == 5
    assert took < 10 and max(latencies) < 10, (took, max(latencies))
    # a retry answers as the first call did (it reported 0 deleted)
    again = await stub.DeleteRelationships(
        pb.DeleteRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(resource_type="workspace", resource_id="d"),
            request_id="bulk",
        ),
        metadata=svc,
    )
    assert (again.revision, again.deleted_count) == (done.revision, 5)
