"""AuthzService through real servers, on SQLite and PostgreSQL, with real tokens."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import decision_pb2, relationship_pb2
from gatehouse.kit.status import bad_request, error_info
from gatehouse.type.v1 import refs_pb2
from services.authz.tests.helpers import (
    active,
    all_pages,
    check_req,
    seed,
    touch,
    unreached_revision_is_unavailable,
)


async def test_write_then_check_and_explain(authz):
    stub, mint, svc, _ = authz
    revision = await seed(stub, svc)
    answer = await stub.CheckCapability(
        check_req(
            "alice",
            "workspace:w",
            "manage:members",
            explain=True,
            consistency=decision_pb2.Consistency(at_least_revision=revision),
        ),
        metadata=svc,
    )
    assert (
        answer.allowed and answer.reason == decision_pb2.DECISION_REASON_ROLE and answer.revision >= revision
    )
    assert "workspace:w#admin@user:alice" in answer.explanation.steps[0].description
    denied = await stub.CheckCapability(check_req("bob", "workspace:w", "manage:members"), metadata=svc)
    assert not denied.allowed and denied.reason == decision_pb2.DECISION_REASON_NO_RELATIONSHIP
    access = await stub.GetAccess(
        pb.GetAccessRequest(
            subject=refs_pb2.SubjectRef(type="user", id="bob"),
            resource=refs_pb2.ResourceRef(type="workspace", id="w"),
        ),
        metadata=mint.md(mint.user("bob")),
    )
    assert (access.member_role, access.effective_role, list(access.capabilities)) == (
        "viewer",
        "viewer",
        ["chat", "read:files", "read:model", "view:wiki"],
    )


async def test_caller_rules(authz):
    stub, mint, svc, _ = authz
    await seed(stub, svc)
    # a user may check themselves
    own = await stub.CheckCapability(
        check_req("bob", "workspace:w", "chat"), metadata=mint.md(mint.user("bob"))
    )
    assert own.allowed
    # but not someone else
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(
            check_req("alice", "workspace:w", "chat"), metadata=mint.md(mint.user("bob"))
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # platform admins may check anyone
    other = await stub.CheckCapability(
        check_req("alice", "workspace:w", "chat"), metadata=mint.md(mint.user("root"))
    )
    assert other.allowed
    # writes are for service accounts only
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteRelationships(
            pb.WriteRelationshipsRequest(updates=touch("workspace:w#owner@user:bob")),
            metadata=mint.md(mint.user("root")),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(info.value).reason == "SERVICE_ACCOUNT_REQUIRED"
    # no token at all
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(check_req("bob", "workspace:w", "chat"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_invalid_arguments_name_the_field(authz):
    stub, _, svc, _ = authz
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(check_req("bob", "workspace:w", "fly:away"), metadata=svc)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(info.value).field_violations[0].field == "capability"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckCapability(check_req("bob", "spaceship:x", "chat"), metadata=svc)
    assert bad_request(info.value).field_violations[0].field == "resource.type"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteRelationships(
            pb.WriteRelationshipsRequest(updates=touch("workspace:w#emperor@user:bob")), metadata=svc
        )
    assert [v.field for v in bad_request(info.value).field_violations] == ["updates[0].relationship.relation"]


async def test_idempotent_write_and_atomic_precondition(authz):
    stub, _, svc, _ = authz
    first = await stub.WriteRelationships(
        pb.WriteRelationshipsRequest(updates=touch("workspace:w#viewer@user:carol"), request_id="r-1"),
        metadata=svc,
    )
    again = await stub.WriteRelationships(
        pb.WriteRelationshipsRequest(updates=touch("workspace:w#viewer@user:carol"), request_id="r-1"),
        metadata=svc,
    )
    assert again.revision == first.revision
    failing = pb.WriteRelationshipsRequest(
        updates=touch("workspace:w#owner@user:mallory", "workspace:w#admin@user:mallory"),
        preconditions=[
            relationship_pb2.Precondition(
                operation=relationship_pb2.Precondition.OPERATION_MUST_EXIST,
                filter=relationship_pb2.RelationshipFilter(
                    resource_type="workspace", resource_id="w", relation="owner"
                ),
            )
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WriteRelationships(failing, metadata=svc)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(info.value).reason == "RELATIONSHIP_PRECONDITION_FAILED"
    read = await stub.ReadRelationships(
        pb.ReadRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(subject_type="user", subject_id="mallory"),
            consistency=decision_pb2.Consistency(fully_consistent=True),
        ),
        metadata=svc,
    )
    assert list(read.relationships) == []


async def test_revision_not_reached_is_unavailable_never_stale(authz):
    stub, _, svc, _ = authz
    await unreached_revision_is_unavailable(stub, stub, svc)


async def test_lookup_resources_is_complete_across_pages(authz):
    stub, _, svc, _ = authz
    updates = touch(*[f"workspace:w{i:03d}#viewer@user:frank" for i in range(57)])
    revision = (
        await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=updates), metadata=svc)
    ).revision
    seen = await all_pages(
        lambda token: stub.LookupResources(
            pb.LookupResourcesRequest(
                subject=refs_pb2.SubjectRef(type="user", id="frank"),
                resource_type="workspace",
                capability="chat",
                page_size=10,
                page_token=token,
                consistency=decision_pb2.Consistency(at_least_revision=revision),
            ),
            metadata=svc,
        ),
        lambda page: list(page.resource_ids),
    )
    assert seen == [f"w{i:03d}" for i in range(57)]


async def test_delete_relationships_within_organization(authz):
    stub, _, svc, _ = authz
    await stub.WriteRelationships(
        pb.WriteRelationshipsRequest(
            updates=touch(
                "workspace:w1#parent@organization:o",
                "workspace:w2#parent@organization:o2",
                "group:g#parent@organization:o",
                "workspace:w1#admin@user:gina",
                "workspace:w2#admin@user:gina",
                "group:g#member@user:gina",
            )
        ),
        metadata=svc,
    )
    out = await stub.DeleteRelationships(
        pb.DeleteRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(
                subject_type="user", subject_id="gina", within_organization_id="o"
            )
        ),
        metadata=svc,
    )
    assert out.deleted_count == 2
    left = await stub.ReadRelationships(
        pb.ReadRelationshipsRequest(
            filter=relationship_pb2.RelationshipFilter(subject_type="user", subject_id="gina"),
            consistency=decision_pb2.Consistency(at_least_revision=out.revision),
        ),
        metadata=svc,
    )
    assert [(r.resource.id, r.relation) for r in left.relationships] == [("w2", "admin")]


async def test_grants_need_share_and_hide_other_tenants(authz):
    stub, mint, svc, _ = authz
    await stub.WriteRelationships(
        pb.WriteRelationshipsRequest(
            updates=touch(
                "workspace:w#parent@organization:o",
                "dataset:d#parent@workspace:w",
                "workspace:w#admin@user:owner1",
                "workspace:w#viewer@user:viewer1",
                "workspace:z#parent@organization:o2",
                "workspace:z#admin@user:stranger",
            )
            + [active("o", "owner1"), active("o", "viewer1"), active("o2", "stranger")]
        ),
        metadata=svc,
    )
    grant = pb.GrantCapabilityRequest(
        resource=refs_pb2.ResourceRef(type="dataset", id="d"),
        capability="read",
        subject=refs_pb2.SubjectRef(type="organization", id="o"),
    )
    revision = (await stub.GrantCapability(grant, metadata=mint.md(mint.user("owner1")))).revision
    assert revision > 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GrantCapability(grant, metadata=mint.md(mint.user("viewer1")))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListGrants(
            pb.ListGrantsRequest(resource=refs_pb2.ResourceRef(type="dataset", id="d")),
            metadata=mint.md(mint.user("stranger")),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    grants = await stub.ListGrants(
        pb.ListGrantsRequest(resource=refs_pb2.ResourceRef(type="dataset", id="d")),
        metadata=mint.md(mint.user("owner1")),
    )
    assert [(g.subject.type, g.capability) for g in grants.grants] == [("organization", "read")]


async def test_catalog_and_batch(authz):
    stub, _, svc, _ = authz
    catalog = (await stub.GetCatalog(pb.GetCatalogRequest(), metadata=svc)).catalog
    ws = next(t for t in catalog.resource_types if t.name == "workspace")
    assert [r.name for r in ws.roles] == ["viewer", "member", "admin", "owner"]
    revision = await seed(stub, svc)
    batch = await stub.CheckCapabilities(
        pb.CheckCapabilitiesRequest(
            items=[
                check_req("alice", "workspace:w", c) for c in ("chat", "delete:workspace", "manage:members")
            ],
            consistency=decision_pb2.Consistency(at_least_revision=revision),
        ),
        metadata=svc,
    )
    assert [r.allowed for r in batch.results] == [True, False, True]
