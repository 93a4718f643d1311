"""Caller rules, grant rules, consistency, Watch, audit events and pagination through real
servers with real tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import sqlalchemy as sa

from gatehouse.audit.v1 import audit_event_pb2
from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import decision_pb2, relationship_pb2
from gatehouse.kit.db import Database
from gatehouse.kit.status import bad_request, error_info
from gatehouse.type.v1 import refs_pb2
from services.authz.tests.helpers import Op, active, all_pages, check_req, rel, touch

R = decision_pb2


def ref(text: str) -> refs_pb2.ResourceRef:
    rtype, rid = text.split(":")
    return refs_pb2.ResourceRef(type=rtype, id=rid)


def sub(text: str) -> refs_pb2.SubjectRef:
    stype, sid = text.split(":")
    return refs_pb2.SubjectRef(type=stype, id=sid)


async def write(stub, svc, *texts, extra=(), **kw) -> int:
    request = pb.WriteRelationshipsRequest(updates=touch(*texts) + list(extra), **kw)
    return (await stub.WriteRelationships(request, metadata=svc)).revision


def state_update(**item) -> relationship_pb2.RelationshipUpdate:
    """A TOUCH of one state item, e.g. ``subject_state=SubjectState(...)``."""
    return relationship_pb2.RelationshipUpdate(operation=Op.OPERATION_TOUCH, **item)


async def code_of(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code()


async def world(stub, svc) -> int:
    """Org o (workspace w, dataset d) and org o2 (workspace z); a cast of users."""
    return await write(
        stub,
        svc,
        "workspace:w#parent@organization:o",
        "dataset:d#parent@workspace:w",
        "group:g#parent@organization:o",
        "workspace:z#parent@organization:o2",
        "organization:o#owner@user:owner",
        "organization:o#admin@user:orgadmin",
        "workspace:w#admin@user:wsadmin",
        "workspace:w#member@user:member",
        "workspace:w#viewer@user:viewer",
        "workspace:z#admin@user:stranger",
        "platform:platform#platform_admin@user:root",
        extra=[active("o", u) for u in ("owner", "orgadmin", "wsadmin", "member", "viewer", "plain")]
        + [active("o2", "stranger")],
    )


async def test_caller_rules_for_every_read_rpc(authz):
    stub, mint, svc, _ = authz
    await world(stub, svc)
    viewer, root = mint.md(mint.user("viewer")), mint.md(mint.user("root"))
    about_other = [
        stub.GetAccess(
            pb.GetAccessRequest(subject=sub("user:wsadmin"), resource=ref("workspace:w")), metadata=viewer
        ),
        stub.LookupResources(
            pb.LookupResourcesRequest(
                subject=sub("user:wsadmin"), resource_type="workspace", capability="chat"
            ),
            metadata=viewer,
        ),
        stub.CheckCapabilities(
            pb.CheckCapabilitiesRequest(
                items=[
                    check_req("viewer", "workspace:w", "chat"),
                    check_req("wsadmin", "workspace:w", "chat"),
                ]
            ),
            metadata=viewer,
        ),
        stub.LookupSubjects(
            pb.LookupSubjectsRequest(resource=ref("workspace:w"), capability="chat"), metadata=viewer
        ),
        stub.ReadRelationships(pb.ReadRelationshipsRequest(), metadata=viewer),
        stub.DeleteRelationships(
            pb.DeleteRelationshipsRequest(
                filter=relationship_pb2.RelationshipFilter(subject_id="x", subject_type="user")
            ),
            metadata=root,  # platform admins may read, but never write relationships
        ),
    ]
    for call in about_other:
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    watch = stub.Watch(pb.WatchRequest(), metadata=root)
    assert await code_of(watch.read()) == grpc.StatusCode.PERMISSION_DENIED
    # a user about themselves, a platform admin and a service account about anyone
    for md, who in ((viewer, "viewer"), (root, "wsadmin"), (svc, "wsadmin")):
        access = await stub.GetAccess(
            pb.GetAccessRequest(subject=sub(f"user:{who}"), resource=ref("workspace:w")), metadata=md
        )
        assert access.capabilities
    assert (
        await stub.LookupSubjects(
            pb.LookupSubjectsRequest(resource=ref("workspace:w"), capability="chat"), metadata=root
        )
    ).user_ids
    # a disabled platform admin is no longer allowed to ask about others
    await write(
        stub,
        svc,
        extra=[
            state_update(subject_state=relationship_pb2.SubjectState(subject=sub("user:root"), disabled=True))
        ],
    )
    assert (
        await code_of(stub.CheckCapability(check_req("viewer", "workspace:w", "chat"), metadata=root))
        == grpc.StatusCode.PERMISSION_DENIED
    )


async def test_field_violations_name_the_item_and_field(authz):
    stub, _, svc, _ = authz
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapabilities(
            pb.CheckCapabilitiesRequest(
                items=[check_req("u", "workspace:w", "chat"), check_req("u", "workspace:w", "fly:away")]
            ),
            metadata=svc,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_request(info.value).field_violations] == ["items[1].capability"]
    bad_subject = pb.CheckCapabilityRequest(
        subject=sub("robot:r"), resource=ref("workspace:w"), capability="chat"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(bad_subject, metadata=svc)
    assert [v.field for v in bad_request(info.value).field_violations] == ["subject.type"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LookupResources(
            pb.LookupResourcesRequest(subject=sub("user:u"), resource_type="spaceship", capability="fly"),
            metadata=svc,
        )
    assert [v.field for v in bad_request(info.value).field_violations] == ["resource_type"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapabilities(
            pb.CheckCapabilitiesRequest(items=[check_req("u", "workspace:w", "chat")] * 1001), metadata=svc
        )
    assert [v.field for v in bad_request(info.value).field_violations] == ["items"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteRelationships(
            pb.WriteRelationshipsRequest(
                updates=touch("workspace:w#viewer@user:u"),
                preconditions=[
                    relationship_pb2.Precondition(
                        operation=relationship_pb2.Precondition.OPERATION_MUST_EXIST,
                        filter=relationship_pb2.RelationshipFilter(within_organization_id="o"),
                    )
                ],
            ),
            metadata=svc,
        )
    assert [v.field for v in bad_request(info.value).field_violations] == [
        "preconditions[0].filter.within_organization_id"
    ]


async def test_explain_traces_paths_and_denials(authz):
    stub, _, svc, _ = authz
    await world(stub, svc)
    await write(
        stub, svc, "group:g#member@user:plain", "workspace:w#member@group:g", extra=[active("o", "plain")]
    )
    answer = await stub.CheckCapability(
        check_req("plain", "workspace:w", "manage:wiki", explain=True), metadata=svc
    )
    assert answer.allowed and answer.reason == R.DECISION_REASON_GROUP_ROLE
    assert [s.relationship for s in answer.explanation.steps][:2] == [
        "group:g#member@user:plain",
        "workspace:w#member@group:g",
    ]
    inherited = await stub.CheckCapability(
        check_req("owner", "dataset:d", "share", explain=True), metadata=svc
    )
    rels = [s.relationship for s in inherited.explanation.steps]
    assert inherited.reason == R.DECISION_REASON_INHERITED_ROLE
    assert rels[:3] == [
        "organization:o#owner@user:owner",
        "workspace:w#parent@organization:o",
        "dataset:d#parent@workspace:w",
    ]
    denied = await stub.CheckCapability(
        check_req("viewer", "workspace:w", "manage:members", explain=True), metadata=svc
    )
    text = " | ".join(s.description for s in denied.explanation.steps)
    assert not denied.allowed and "viewer on workspace:w lacks manage:members" in text
    assert "no grant of manage:members" in text
    await write(
        stub,
        svc,
        extra=[
            state_update(
                resource_settings=relationship_pb2.ResourceSettings(
                    resource=ref("organization:o"), require_mfa=True
                )
            )
        ],
    )
    mfa = await stub.CheckCapability(check_req("viewer", "workspace:w", "chat", explain=True), metadata=svc)
    assert mfa.reason == R.DECISION_REASON_MFA_REQUIRED
    assert "requires MFA" in mfa.explanation.steps[0].description
    with_otp = await stub.CheckCapability(
        check_req(
            "viewer",
            "workspace:w",
            "chat",
            authentication_context=R.AuthenticationContext(amr=["pwd", "otp"]),
        ),
        metadata=svc,
    )
    assert with_otp.allowed


async def test_grant_rules(authz):
    stub, mint, svc, _ = authz
    await world(stub, svc)

    def grant(capability, subject, resource="dataset:d", request_id=""):
        return pb.GrantCapabilityRequest(
            resource=ref(resource), capability=capability, subject=sub(subject), request_id=request_id
        )

    owner, viewer, stranger = (mint.md(mint.user(u)) for u in ("owner", "viewer", "stranger"))
    # an organization owner grants the whole organization read on a dataset
    revision = (await stub.GrantCapability(grant("read", "organization:o"), metadata=owner)).revision
    answer = await stub.CheckCapability(
        check_req("plain", "dataset:d", "read", consistency=R.Consistency(at_least_revision=revision)),
        metadata=svc,
    )
    assert answer.allowed and answer.reason == R.DECISION_REASON_ORGANIZATION_GRANT
    # without share: denied; another tenant: not found; another organization as grantee: invalid
    assert (
        await code_of(stub.GrantCapability(grant("read", "user:x"), metadata=viewer))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(stub.GrantCapability(grant("read", "user:x"), metadata=stranger))
        == grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(stub.GrantCapability(grant("read", "organization:o2"), metadata=owner)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # a grant on the organization itself needs org:manage_grants, and no one grants what they lack
    orgadmin = mint.md(mint.user("orgadmin"))
    await stub.GrantCapability(grant("org:read_audit", "group:g", "organization:o"), metadata=orgadmin)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GrantCapability(grant("org:delete", "user:orgadmin", "organization:o"), metadata=orgadmin)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await code_of(
            stub.GrantCapability(grant("org:read_audit", "user:viewer", "organization:o"), metadata=viewer)
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # idempotent by request id; revoke takes it away
    first = await stub.GrantCapability(grant("write", "user:viewer", request_id="g-1"), metadata=owner)
    again = await stub.GrantCapability(grant("write", "user:viewer", request_id="g-1"), metadata=owner)
    assert first.revision == again.revision
    revoked = await stub.RevokeCapability(
        pb.RevokeCapabilityRequest(resource=ref("dataset:d"), capability="write", subject=sub("user:viewer")),
        metadata=owner,
    )
    after = await stub.CheckCapability(
        check_req(
            "viewer", "dataset:d", "write", consistency=R.Consistency(at_least_revision=revoked.revision)
        ),
        metadata=svc,
    )
    assert not after.allowed
    # ListGrants pages through every grant
    for i in range(7):
        await stub.GrantCapability(grant("read", f"user:reader{i}"), metadata=svc)
    seen = await all_pages(
        lambda token: stub.ListGrants(
            pb.ListGrantsRequest(resource=ref("dataset:d"), page_size=3, page_token=token), metadata=owner
        ),
        lambda page: [(g.subject.type, g.subject.id, g.capability) for g in page.grants],
    )
    assert len(seen) == 8 and len(set(seen)) == 8 and ("organization", "o", "read") in seen


async def test_request_ids_are_scoped_to_caller_and_rpc(authz):
    stub, mint, svc, _ = authz
    a = await write(stub, svc, "workspace:w#viewer@user:a", request_id="same")
    b = await write(stub, mint.md(mint.service("identity")), "workspace:w#viewer@user:b", request_id="same")
    assert b > a  # another caller's request with the same id is its own request
    deleted = await stub.DeleteRelationships(
        pb.DeleteRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(subject_type="user", subject_id="a"), request_id="same"
        ),
        metadata=svc,
    )
    assert deleted.deleted_count == 1 and deleted.revision > b


async def test_unreached_revision_is_unavailable_within_the_deadline(authz):
    stub, _, svc, _ = authz
    revision = await write(stub, svc, "workspace:w#viewer@user:u")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(
            check_req("u", "workspace:w", "chat", consistency=R.Consistency(at_least_revision=revision + 1)),
            metadata=svc,
            timeout=0.6,
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(info.value).reason == "REVISION_NOT_REACHED"
    assert time.monotonic() - started < 0.6 + 0.3
    # fully_consistent and a reachable revision answer at once
    answer = await stub.CheckCapability(
        check_req("u", "workspace:w", "chat", consistency=R.Consistency(fully_consistent=True)), metadata=svc
    )
    assert answer.allowed and answer.revision >= revision


async def test_failed_precondition_changes_nothing_and_records_nothing(authz):
    stub, _, svc, database_url = authz
    before = await write(stub, svc, "workspace:w#owner@user:o1")
    events_before = await audit_events(database_url)
    failing = pb.WriteRelationshipsRequest(
        updates=touch("workspace:w#admin@user:m1", "workspace:w#admin@user:m2")
        + [
            relationship_pb2.RelationshipUpdate(
                operation=Op.OPERATION_DELETE, relationship=rel("workspace:w#owner@user:o1")
            )
        ],
        preconditions=[
            relationship_pb2.Precondition(
                operation=relationship_pb2.Precondition.OPERATION_MUST_NOT_EXIST,
                filter=relationship_pb2.RelationshipFilter(
                    resource_type="workspace", resource_id="w", relation="owner"
                ),
            )
        ],
    )
    assert (
        await code_of(stub.WriteRelationships(failing, metadata=svc)) == grpc.StatusCode.FAILED_PRECONDITION
    )
    create_twice = pb.WriteRelationshipsRequest(
        updates=touch("workspace:w#admin@user:m3")
        + [
            relationship_pb2.RelationshipUpdate(
                operation=Op.OPERATION_CREATE, relationship=rel("workspace:w#owner@user:o1")
            )
        ]
    )
    assert (
        await code_of(stub.WriteRelationships(create_twice, metadata=svc))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert await audit_events(database_url) == events_before
    next_revision = await write(stub, svc, "workspace:w#viewer@user:v1")
    assert next_revision == before + 1  # the failed writes consumed no revision
    read = await stub.ReadRelationships(
        pb.ReadRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(resource_type="workspace", resource_id="w"),
            consistency=R.Consistency(fully_consistent=True),
        ),
        metadata=svc,
    )
    assert sorted(r.subject.id for r in read.relationships) == ["o1", "v1"]


async def audit_events(database_url) -> list[audit_event_pb2.AuditEvent]:
    db = Database(database_url)
    try:
        async with db.unit_of_work() as uow:
            rows = await uow.session.execute(
                sa.text("SELECT payload FROM outbox WHERE topic = 'audit' ORDER BY id")
            )
            return [audit_event_pb2.AuditEvent.FromString(bytes(r.payload)) for r in rows]
    finally:
        await db.dispose()


async def test_every_write_records_an_audit_event(authz):
    stub, mint, svc, database_url = authz
    await world(stub, svc)
    await stub.GrantCapability(
        pb.GrantCapabilityRequest(resource=ref("dataset:d"), capability="read", subject=sub("user:viewer")),
        metadata=mint.md(mint.user("owner")),
    )
    await stub.DeleteRelationships(
        pb.DeleteRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(subject_type="user", subject_id="member")
        ),
        metadata=svc,
    )
    events = await audit_events(database_url)
    assert [e.action for e in events] == [
        "authz.relationships.write",
        "authz.grant",
        "authz.relationships.delete",
    ]
    grant = events[1]
    assert grant.service == "authz" and grant.organization_id == "o"
    assert (grant.actor.type, grant.actor.id) == ("user", "owner")
    assert (grant.target.type, grant.target.id) == ("dataset", "d")
    assert "dataset:d#grant:read@user:viewer" in list(grant.details["changes"])
    assert list(events[2].details["changes"]) == ["workspace:w#member@user:member"]


async def test_watch_streams_changes_in_revision_order(authz):
    stub, _, svc, _ = authz
    first = await write(stub, svc, "workspace:w#viewer@user:a")
    call = stub.Watch(pb.WatchRequest(since_revision=first, resource_types=["workspace"]), metadata=svc)
    try:
        second = await write(stub, svc, "workspace:w#admin@user:b", "dataset:d#viewer@user:c")
        message = await asyncio.wait_for(call.read(), 5)
        assert message.revision == second
        assert [(c.revision, c.update.relationship.subject.id) for c in message.changes] == [(second, "b")]
        third = await write(stub, svc, "workspace:w#viewer@user:d")
        message = await asyncio.wait_for(call.read(), 5)
        assert [(c.revision, c.update.operation) for c in message.changes] == [(third, Op.OPERATION_TOUCH)]
    finally:
        call.cancel()


async def test_lookups_and_reads_are_complete_across_pages(authz):
    stub, _, svc, _ = authz
    users = [f"u{i:02d}" for i in range(23)]
    revision = await write(
        stub,
        svc,
        "workspace:w#parent@organization:o",
        *[f"group:g#member@user:{u}" for u in users[:10]],
        "workspace:w#viewer@group:g",
        *[f"workspace:w#member@user:{u}" for u in users[10:]],
        extra=[active("o", u) for u in users],
    )
    seen = await all_pages(
        lambda token: stub.LookupSubjects(
            pb.LookupSubjectsRequest(
                resource=ref("workspace:w"),
                capability="chat",
                page_size=4,
                page_token=token,
                consistency=R.Consistency(at_least_revision=revision),
            ),
            metadata=svc,
        ),
        lambda page: list(page.user_ids),
    )
    assert seen == users
    rows = await all_pages(
        lambda token: stub.ReadRelationships(
            pb.ReadRelationshipsRequest(
                filter=relationship_pb2.RelationshipFilter(resource_type="group"),
                page_size=3,
                page_token=token,
            ),
            metadata=svc,
        ),
        lambda page: [r.subject.id for r in page.relationships],
    )
    assert sorted(rows) == users[:10] and len(rows) == 10


async def test_role_matrix_through_the_api_is_exact(authz):
    """Every capability each workspace and organization role has, and (by equality) every one it lacks."""
    from services.authz.tests.test_index import ORDER, ORG_CAPS, WS_CAPS, cumulative

    stub, _, svc, _ = authz
    revision = await write(
        stub,
        svc,
        "workspace:w#parent@organization:o",
        *[f"workspace:w#{role}@user:ws_{role}" for role in ORDER],
        *[f"organization:o#{role}@user:org_{role}" for role in ORDER],
        extra=[active("o", f"{kind}_{role}") for kind in ("ws", "org") for role in ORDER],
    )
    at = R.Consistency(at_least_revision=revision)
    for kind, resource, table in (("ws", "workspace:w", WS_CAPS), ("org", "organization:o", ORG_CAPS)):
        for role in ORDER:
            access = await stub.GetAccess(
                pb.GetAccessRequest(
                    subject=sub(f"user:{kind}_{role}"), resource=ref(resource), consistency=at
                ),
                metadata=svc,
            )
            assert list(access.capabilities) == sorted(cumulative(table, role)), (kind, role)
            assert (access.member_role, access.effective_role) == (role, role)
            every = sorted(set().union(*table.values()))
            batch = await stub.CheckCapabilities(
                pb.CheckCapabilitiesRequest(items=[check_req(f"{kind}_{role}", resource, c) for c in every]),
                metadata=svc,
            )
            held = {c for c, r in zip(every, batch.results, strict=True) if r.allowed}
            assert held == cumulative(table, role), (kind, role)


async def test_batch_honours_the_strictest_item_consistency(authz):
    stub, _, svc, _ = authz
    revision = await write(stub, svc, "workspace:w#viewer@user:u")
    late = R.Consistency(at_least_revision=revision + 10)
    items = [check_req("u", "workspace:w", "chat"), check_req("u", "workspace:w", "chat", consistency=late)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapabilities(pb.CheckCapabilitiesRequest(items=items), metadata=svc, timeout=0.4)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # the batch's own requirement overrides the items'
    answer = await stub.CheckCapabilities(
        pb.CheckCapabilitiesRequest(items=items, consistency=R.Consistency(at_least_revision=revision)),
        metadata=svc,
    )
    assert [r.allowed for r in answer.results] == [True, True]


async def test_forbidden_or_bad_requests_are_refused_before_any_wait(authz):
    stub, mint, svc, _ = authz
    far = R.Consistency(at_least_revision=10_000)
    started = time.monotonic()
    request = check_req("someone_else", "workspace:w", "chat", consistency=far)
    assert await code_of(stub.CheckCapability(request, metadata=mint.md(mint.user("me")), timeout=2)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    bad = pb.CheckCapabilitiesRequest(items=[check_req("u", "workspace:", "chat")], consistency=far)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapabilities(bad, metadata=svc, timeout=2)
    assert [v.field for v in bad_request(info.value).field_violations] == ["items[0].resource.id"]
    assert time.monotonic() - started < 1.0


async def test_state_updates_are_validated(authz):
    stub, _, svc, _ = authz
    updates = [
        state_update(subject_state=relationship_pb2.SubjectState(subject=sub("robot:r"), disabled=True)),
        state_update(resource_state=relationship_pb2.ResourceState(resource=ref("galaxy:g"), deleted=True)),
        state_update(resource_settings=relationship_pb2.ResourceSettings(resource=ref("workspace:w"))),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=updates), metadata=svc)
    assert [v.field for v in bad_request(info.value).field_violations] == [
        "updates[0].subject_state.subject.type",
        "updates[1].resource_state.resource.type",
        "updates[2].resource_settings.resource",
    ]
