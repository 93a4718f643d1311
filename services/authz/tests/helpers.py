"""Shared helpers of the authz service tests: real servers, real tokens, relationship text."""

from __future__ import annotations

import time
from dataclasses import astuple

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import decision_pb2, relationship_pb2
from gatehouse.kit.app import build_server
from gatehouse.kit.status import error_info
from gatehouse.testing.servers import settings_for
from gatehouse.type.v1 import refs_pb2
from gatehouse_authz.domain import model as m
from gatehouse_authz.server import build

Op = relationship_pb2.RelationshipUpdate.Operation


async def start_authz(tmp_path, database_url, mint, name="a"):
    settings = settings_for(tmp_path / name, service="authz", database_url=database_url)

    def with_test_tokens(settings, runtime):
        spec = build(settings, runtime)
        spec.verifier = mint.verifier  # tokens signed by the test's key (identity is not running here)
        spec.depends_on = ()
        return spec

    server = build_server(settings, with_test_tokens)
    port = await server.start()
    await server.wait_started()
    return server, port


def parse_tuple(text: str) -> m.Tuple:
    """`workspace:w#admin@user:u` or `dataset:d#grant:read@user:u`."""
    left, subject = text.split("@")
    resource, relation = left.split("#")
    rtype, rid = resource.split(":")
    stype, sid = subject.split(":")
    cap = ""
    if relation.startswith("grant:"):
        relation, cap = "grant", relation[len("grant:") :]
    return m.Tuple(rtype, rid, relation, stype, sid, cap)


def rel(text: str) -> relationship_pb2.Relationship:
    rtype, rid, relation, stype, sid, cap = astuple(parse_tuple(text))
    return relationship_pb2.Relationship(
        resource=refs_pb2.ResourceRef(type=rtype, id=rid),
        relation=relation,
        subject=refs_pb2.SubjectRef(type=stype, id=sid),
        capability=cap,
    )


def touch(*texts):
    return [
        relationship_pb2.RelationshipUpdate(operation=Op.OPERATION_TOUCH, relationship=rel(t)) for t in texts
    ]


def active(org, user):
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_TOUCH,
        membership_state=relationship_pb2.MembershipState(
            organization_id=org, user_id=user, status=relationship_pb2.MEMBERSHIP_STATUS_ACTIVE
        ),
    )


def check_req(user, resource, cap, **kw):
    rtype, rid = resource.split(":")
    return pb.CheckCapabilityRequest(
        subject=refs_pb2.SubjectRef(type="user", id=user),
        resource=refs_pb2.ResourceRef(type=rtype, id=rid),
        capability=cap,
        **kw,
    )


async def seed(stub, svc):
    updates = touch(
        "workspace:w#parent@organization:o",
        "workspace:w#admin@user:alice",
        "workspace:w#viewer@user:bob",
        "platform:platform#platform_admin@user:root",
    ) + [active("o", "alice"), active("o", "bob")]
    return (
        await stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=updates), metadata=svc)
    ).revision


async def all_pages(fetch, items, limit: int = 50) -> list:
    """Every item over the pages of a paginated RPC: ``fetch(token)`` returns a page, ``items(page)``
    its items; bounded to ``limit`` pages (a pagination loop is a test failure, not a hang)."""
    out, token = [], ""
    for _ in range(limit):
        page = await fetch(token)
        out += items(page)
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError(f"more than {limit} pages")


async def write(stub, svc, *texts) -> int:
    request = pb.WriteRelationshipsRequest(updates=touch(*texts))
    return (await stub.WriteRelationships(request, metadata=svc)).revision


async def seen_at_revision(writer, reader, svc, user: str) -> None:
    """A write through ``writer`` is allowed by ``reader`` when asked at the write's revision."""
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


async def unreached_revision_is_unavailable(writer, reader, svc) -> None:
    """A revision that never arrives: UNAVAILABLE (REVISION_NOT_REACHED) within the deadline."""
    revision = await write(writer, svc, "workspace:w#viewer@user:u")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await reader.CheckCapability(
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
