"""Shared helpers of the authz service tests: real servers, real tokens, relationship text."""

from __future__ import annotations

from dataclasses import astuple

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import relationship_pb2
from gatehouse.kit.app import build_server
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
