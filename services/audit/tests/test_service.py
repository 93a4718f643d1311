"""AuditService through real servers (audit + authz), on SQLite and PostgreSQL, with real tokens."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatehouse.audit.v1 import audit_event_pb2 as epb
from gatehouse.audit.v1 import audit_service_pb2 as pb
from gatehouse.audit.v1 import audit_service_pb2_grpc
from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc, relationship_pb2
from gatehouse.kit import audit_log
from gatehouse.kit.db import Database
from gatehouse.kit.keys import issue_token
from gatehouse.kit.pagination import encode_token
from gatehouse.kit.status import bad_request, error_info
from gatehouse.testing.db import make_database_url
from gatehouse.testing.tokens import AUDIENCE, ISSUER, TokenMint
from gatehouse_audit.adapters.tables import events as events_table
from gatehouse_audit.api.servicer import _fingerprint
from gatehouse_audit.domain.retention import retention_days_of
from gatehouse_audit.domain.usecases import READ_ACTION
from services.audit.tests.helpers import domain_events, event, generate_keys_env, start_audit
from services.authz.tests.helpers import active, rel, start_authz, touch

RELATIONSHIPS = [
    "workspace:wa1#parent@organization:A",
    "workspace:wa2#parent@organization:A",
    "workspace:wb1#parent@organization:B",
    "organization:A#admin@user:org_admin_a",
    "organization:B#admin@user:org_admin_b",
    "workspace:wa1#admin@user:ws_admin",
    "workspace:wa1#viewer@user:viewer",
    "platform:platform#security_auditor@user:auditor",
    "platform:platform#platform_admin@user:root",
]
MEMBERS = [("A", "org_admin_a"), ("B", "org_admin_b"), ("A", "ws_admin"), ("A", "viewer")]


@pytest.fixture
async def stack(tmp_path, database_url, request):
    """authz (own database) + audit, the relationships above, and a seeded trail."""
    mint = TokenMint()
    cleanups: list = []
    authz_url = make_database_url(request.node.callspec.params["database_url"], tmp_path, "authz", cleanups)
    authz, authz_port = await start_authz(tmp_path, authz_url, mint, name="authz")
    keys = generate_keys_env()
    audit, port = await start_audit(tmp_path / "audit", database_url, mint, keys, authz_port=authz_port)
    svc = mint.md(mint.service("tenancy"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authz_port}") as channel:
        await authz_service_pb2_grpc.AuthzServiceStub(channel).WriteRelationships(
            apb.WriteRelationshipsRequest(updates=touch(*RELATIONSHIPS) + [active(o, u) for o, u in MEMBERS]),
            metadata=svc,
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = audit_service_pb2_grpc.AuditServiceStub(channel)
    trail = {
        "wa1": [event("A", "wa1") for _ in range(30)],
        "wa2": [event("A", "wa2", action="identity.login.failed", outcome="FAILURE") for _ in range(20)],
        "A": [event("A", actor="u-9") for _ in range(10)],
        "B": [event("B", "wb1") for _ in range(15)],
        "platform": [event("", action="identity.user.create") for _ in range(5)],
    }
    everything = [e for group in trail.values() for e in group]
    accepted = 0
    for group in trail.values():  # in order; each service sends its own events, with its own token
        service = group[0].service
        answer = await stub.IngestEvents(
            pb.IngestEventsRequest(events=group), metadata=mint.md(mint.service(service))
        )
        assert answer.duplicate_count == 0
        accepted += answer.accepted_count
    assert accepted == len(everything) == 80

    def user(name):
        return mint.md(mint.user(name))

    yield (
        stub,
        user,
        svc,
        trail,
        {"audit": audit, "authz": authz, "db": database_url, "authz_port": authz_port, "mint": mint},
    )
    await channel.close()
    await audit.stop(0)
    await authz.stop(0)
    for cleanup in cleanups:
        cleanup()


async def list_all(stub, md, page_size=7, **filter_fields):
    ids, token, pages = [], "", 0
    while pages < 100:
        answer = await stub.ListEvents(
            pb.ListEventsRequest(
                filter=pb.EventFilter(**filter_fields), page_size=page_size, page_token=token
            ),
            metadata=md,
        )
        ids += [e.id for e in answer.events]
        token, pages = answer.next_page_token, pages + 1
        if not token:
            return ids
    raise AssertionError("pagination did not end")


def ids_of(*groups):
    return {e.id for group in groups for e in group}


async def denied(call, code=grpc.StatusCode.PERMISSION_DENIED):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def test_each_reader_sees_exactly_its_scope(stack):
    stub, user, _, trail, _ = stack
    # organization admin: the whole organization, newest first, every page, nothing twice
    listed = await list_all(stub, user("org_admin_a"), organization_id="A")
    assert len(listed) == 60 and set(listed) == ids_of(trail["wa1"], trail["wa2"], trail["A"])
    answer = await stub.ListEvents(
        pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A"), page_size=60),
        metadata=user("org_admin_a"),
    )
    times = [(e.occur_time.ToMicroseconds(), e.id) for e in answer.events]
    assert times == sorted(times, reverse=True)
    # ... and never another organization's, whatever the filter
    await denied(
        stub.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(organization_id="B")), metadata=user("org_admin_a")
        )
    )
    await denied(stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter()), metadata=user("org_admin_a")))
    assert await list_all(stub, user("org_admin_a"), organization_id="A", workspace_id="wb1") == []
    # workspace admin: the workspace only
    assert set(await list_all(stub, user("ws_admin"), organization_id="A", workspace_id="wa1")) == ids_of(
        trail["wa1"]
    )
    assert set(await list_all(stub, user("ws_admin"), workspace_id="wa1")) == ids_of(trail["wa1"])
    assert await list_all(stub, user("ws_admin"), organization_id="B", workspace_id="wa1") == []
    await denied(
        stub.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A")), metadata=user("ws_admin")
        )
    )
    await denied(
        stub.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(workspace_id="wa2")), metadata=user("ws_admin")
        )
    )
    # a workspace viewer, a stranger, a service account: nothing
    for md in (user("viewer"), user("nobody"), stack[2]):
        err = await denied(
            stub.ListEvents(
                pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A", workspace_id="wa1")),
                metadata=md,
            )
        )
        assert error_info(err).reason == "CAPABILITY_DENIED"


async def test_platform_readers_see_everything_and_are_audited(stack):
    stub, user, _, trail, _ = stack
    for reader in ("auditor", "root"):
        listed = await list_all(stub, user(reader), page_size=25)
        reads = [e for e in listed if e not in ids_of(*trail.values())]
        assert set(listed) - set(reads) == ids_of(*trail.values())
        assert len(reads) >= 1  # the read itself, recorded before it ran
    b_only = await list_all(stub, user("auditor"), organization_id="B")
    assert set(b_only) == ids_of(trail["B"])
    platform = await stub.ListEvents(
        pb.ListEventsRequest(filter=pb.EventFilter(action_prefix=READ_ACTION), page_size=100),
        metadata=user("root"),
    )
    readers = [(e.actor.id, e.organization_id, e.details["rpc"]) for e in platform.events]
    assert ("auditor", "", "ListEvents") in readers and ("root", "", "ListEvents") in readers
    assert any(e.details["organization_id"] == "B" for e in platform.events)
    # the organization admin does not see the platform's chain
    assert not {e.id for e in platform.events} & set(
        await list_all(stub, user("org_admin_a"), organization_id="A")
    )


async def test_get_event_hides_other_tenants(stack):
    stub, user, _, trail, _ = stack
    a_event, b_event, wa2_event = trail["wa1"][0], trail["B"][0], trail["wa2"][0]
    got = await stub.GetEvent(pb.GetEventRequest(event_id=a_event.id), metadata=user("org_admin_a"))
    assert got.event.id == a_event.id and got.event.sequence >= 1 and len(got.event.hash) == 32
    assert got.event.details["name"]["new"] == "b" and got.event.actor.display == "u-1@example.com"
    assert (await stub.GetEvent(pb.GetEventRequest(event_id=a_event.id), metadata=user("ws_admin"))).event.id
    for md, event_id in (
        (user("org_admin_a"), b_event.id),
        (user("ws_admin"), wa2_event.id),
        (user("org_admin_b"), a_event.id),
        (user("org_admin_a"), "no-such-id"),
    ):
        await denied(
            stub.GetEvent(pb.GetEventRequest(event_id=event_id), metadata=md), grpc.StatusCode.NOT_FOUND
        )
    assert (await stub.GetEvent(pb.GetEventRequest(event_id=b_event.id), metadata=user("auditor"))).event.id


async def test_ingest_rules(stack):
    stub, user, svc, trail, _ = stack
    err = await denied(stub.IngestEvents(pb.IngestEventsRequest(events=trail["A"]), metadata=user("root")))
    assert error_info(err).reason == "SERVICE_ACCOUNT_REQUIRED"
    await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=trail["A"])), grpc.StatusCode.UNAUTHENTICATED
    )
    again = await stub.IngestEvents(pb.IngestEventsRequest(events=trail["A"] + trail["B"][:3]), metadata=svc)
    assert (again.accepted_count, again.duplicate_count) == (0, 13)
    bad = epb.AuditEvent(id="x", service="tenancy", action="nodots", actor=epb.Actor(type="robot"))
    err = await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=[trail["A"][0], bad]), metadata=svc),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = sorted(v.field for v in bad_request(err).field_violations)
    assert fields == ["events[1].action", "events[1].actor.type", "events[1].occur_time", "events[1].outcome"]
    forged = event("A", action="audit.events.purge")
    err = await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=[forged]), metadata=svc),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # reserved for audit, and not the caller's own service either
    assert sorted(v.field for v in bad_request(err).field_violations) == [
        "events[0].action",
        "events[0].service",
    ]
    too_many = [event("A") for _ in range(1001)]
    err = await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=too_many), metadata=svc),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request(err).field_violations[0].field == "events"


async def test_a_service_records_only_its_own_events(stack):
    stub, user, svc, _, parts = stack
    impostor = event("A", action="identity.login.succeeded")  # identity's event, sent with tenancy's token
    own = event("A", action="tenancy.group.create")
    err = await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=[own, impostor]), metadata=svc),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    service, action = bad_request(err).field_violations
    assert service.field == "events[1].service" and "'tenancy'" in service.description
    assert action.field == "events[1].action" and "'tenancy.'" in action.description
    listed = await stub.ListEvents(
        pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A"), page_size=1000),
        metadata=user("root"),
    )
    assert {own.id, impostor.id}.isdisjoint(e.id for e in listed.events)  # nothing of the call was stored
    # A service token without the name (issued before identity signed it in) may not ingest at all.
    mint = parts["mint"]
    nameless = issue_token(
        mint.key, issuer=ISSUER, audience=AUDIENCE, subject="tenancy", principal_type="service"
    )
    err = await denied(stub.IngestEvents(pb.IngestEventsRequest(events=[own]), metadata=mint.md(nameless)))
    assert error_info(err).reason == "SERVICE_ACCOUNT_REQUIRED"
    answer = await stub.IngestEvents(pb.IngestEventsRequest(events=[own]), metadata=svc)
    assert answer.accepted_count == 1


async def test_page_token_is_bound_to_its_filter(stack):
    stub, user, _, _, _ = stack
    first = await stub.ListEvents(
        pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A"), page_size=5),
        metadata=user("org_admin_a"),
    )
    err = await denied(
        stub.ListEvents(
            pb.ListEventsRequest(
                filter=pb.EventFilter(organization_id="A", workspace_id="wa2"),
                page_token=first.next_page_token,
            ),
            metadata=user("org_admin_a"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request(err).field_violations[0].field == "page_token"
    err = await denied(
        stub.ListEvents(
            pb.ListEventsRequest(
                filter=pb.EventFilter(organization_id="A", outcome=7), page_size=-1, page_token="%%%"
            ),
            metadata=user("org_admin_a"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in bad_request(err).field_violations] == [
        "page_size",
        "page_token",
        "filter.outcome",
    ]


async def test_export_streams_everything_in_scope(stack):
    stub, user, _, trail, _ = stack
    received = []
    async for message in stub.ExportEvents(
        pb.ExportEventsRequest(filter=pb.EventFilter(organization_id="A", action_prefix="tenancy.")),
        metadata=user("org_admin_a"),
    ):
        received += list(message.events)
    assert {e.id for e in received} == ids_of(trail["wa1"], trail["A"]) and len(received) == 40
    times = [(e.occur_time.ToMicroseconds(), e.id) for e in received]
    assert times == sorted(times)  # oldest first
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.ExportEvents(
            pb.ExportEventsRequest(filter=pb.EventFilter(organization_id="B")), metadata=user("org_admin_a")
        ):
            pass
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_checkpoint_and_verify_detect_an_edit(stack):
    stub, user, _, trail, servers = stack
    md = user("org_admin_a")
    answer = await stub.GetCheckpoint(pb.GetCheckpointRequest(organization_id="A"), metadata=md)
    checkpoint = answer.checkpoint
    assert checkpoint.sequence == 60 and len(checkpoint.signature) == 64
    # anyone holding the public key can check the checkpoint offline (raises if it does not verify)
    signed = b"gatehouse-audit-checkpoint/v1\n" + f'["A",60,"{checkpoint.head_hash.hex()}"]'.encode()
    Ed25519PublicKey.from_public_bytes(answer.public_key).verify(checkpoint.signature, signed)
    ok = await stub.VerifyChain(
        pb.VerifyChainRequest(organization_id="A", checkpoint=checkpoint), metadata=md
    )
    assert ok.ok and ok.checked_count == 60
    await denied(stub.GetCheckpoint(pb.GetCheckpointRequest(organization_id="B"), metadata=md))
    await denied(stub.GetCheckpoint(pb.GetCheckpointRequest(organization_id=""), metadata=md))
    await denied(stub.GetCheckpoint(pb.GetCheckpointRequest(organization_id="A"), metadata=user("ws_admin")))
    assert (
        await stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=user("auditor"))
    ).checkpoint.sequence >= 5
    platform = await stub.VerifyChain(pb.VerifyChainRequest(), metadata=user("auditor"))
    assert platform.ok and platform.checked_count >= 6  # 5 ingested + the auditor's own recorded reads
    victim = trail["wa2"][4]
    db = Database(servers["db"])
    try:
        async with db.unit_of_work() as uow:
            await uow.session.execute(
                sa.update(events_table).where(events_table.c.id == victim.id).values(outcome="SUCCESS")
            )
            await uow.commit()
    finally:
        await db.dispose()
    bad = await stub.VerifyChain(pb.VerifyChainRequest(organization_id="A"), metadata=md)
    assert (bad.ok, bad.failure, bad.failed_event_id) == (False, pb.CHAIN_FAILURE_EDITED, victim.id)
    assert bad.failed_sequence == 35  # stored in batch order: 30 of wa1, then wa2[0..4]
    forged = pb.VerifyChainRequest(organization_id="A", checkpoint=checkpoint)
    forged.checkpoint.sequence = 61
    err = await denied(stub.VerifyChain(forged, metadata=md), grpc.StatusCode.INVALID_ARGUMENT)
    assert bad_request(err).field_violations[0].field == "checkpoint.signature"


async def test_authz_down_fails_closed(stack):
    stub, user, _, _, servers = stack
    await servers["authz"].stop(0)
    await denied(
        stub.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A")), metadata=user("org_admin_a")
        ),
        grpc.StatusCode.UNAVAILABLE,
    )


async def test_a_revoked_admin_is_denied_at_once_despite_the_cache(stack):
    stub, user, svc, _, servers = stack
    md = user("org_admin_a")
    request = pb.ListEventsRequest(filter=pb.EventFilter(organization_id="A"), page_size=1)
    for _ in range(3):  # allowed, and from the second call on answered from the decision cache
        assert len((await stub.ListEvents(request, metadata=md)).events) == 1
    revoke = relationship_pb2.RelationshipUpdate(
        operation=relationship_pb2.RelationshipUpdate.Operation.OPERATION_DELETE,
        relationship=rel("organization:A#admin@user:org_admin_a"),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['authz_port']}") as channel:
        await authz_service_pb2_grpc.AuthzServiceStub(channel).WriteRelationships(
            apb.WriteRelationshipsRequest(updates=[revoke]), metadata=svc
        )
    for _ in range(50):  # the Watch stream carries the change within milliseconds; bounded at 5 s
        try:
            await stub.ListEvents(request, metadata=md)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
            return
        await asyncio.sleep(0.1)
    raise AssertionError("a revoked organization admin could still read the trail after 5 s")


async def test_export_streams_in_pages(stack):
    stub, user, svc, _, _ = stack
    many = [event("A", "wa1", action="tenancy.group.update") for _ in range(1100)]
    for start in (0, 1000):
        await stub.IngestEvents(pb.IngestEventsRequest(events=many[start : start + 1000]), metadata=svc)
    sizes, ids = [], []
    async for message in stub.ExportEvents(
        pb.ExportEventsRequest(filter=pb.EventFilter(organization_id="A", action_prefix="tenancy.group.")),
        metadata=user("org_admin_a"),
    ):
        sizes.append(len(message.events))
        ids += [e.id for e in message.events]
    assert sizes == [500, 500, 100] and sorted(ids) == sorted(e.id for e in many)


async def _reads_recorded(url: str) -> int:
    db = Database(url)
    try:
        async with db.unit_of_work() as uow:
            query = (
                sa.select(sa.func.count())
                .select_from(events_table)
                .where(events_table.c.action == READ_ACTION)
            )
            return (await uow.session.execute(query)).scalar()
    finally:
        await db.dispose()


async def test_every_page_of_a_cross_organization_read_is_recorded(stack):
    # Only the first page was recorded; a page token is plain data the client can make, so a made-up
    # "next page" read every organization's events with no audit.events.read at all.
    stub, user, _, _, parts = stack
    everything = pb.EventFilter()
    first = await stub.ListEvents(
        pb.ListEventsRequest(filter=everything, page_size=10), metadata=user("auditor")
    )
    before = await _reads_recorded(parts["db"])
    forged = encode_token({"t": 2**62, "i": "", "f": _fingerprint(everything)})
    for token in (first.next_page_token, forged):
        await stub.ListEvents(
            pb.ListEventsRequest(filter=everything, page_size=10, page_token=token), metadata=user("auditor")
        )
    assert await _reads_recorded(parts["db"]) == before + 2


def _retention_event(service: str):
    return audit_log.build_event(
        service=service,
        action="tenancy.organization.update",
        actor=audit_log.Actor("service", service, service),
        outcome="SUCCESS",
        organization_id="A",
        target=("organization", "A"),
        details={"audit_retention_days": 1},
    )


async def test_only_tenancy_sets_an_organizations_retention(stack):
    # Any service account could send "tenancy.organization.update" with a short retention under its
    # own service name, and the next purge removed that organization's history (VerifyChain still ok).
    stub, _, _, _, parts = stack
    mint = parts["mint"]
    spoof = _retention_event("gateway")
    err = await denied(
        stub.IngestEvents(pb.IngestEventsRequest(events=[spoof]), metadata=mint.md(mint.service("gateway"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in bad_request(err).field_violations] == ["events[0].action"]
    # and an event that is not tenancy's carries no retention, whatever its action says
    assert retention_days_of(domain_events([spoof])[0]) is None
    assert retention_days_of(domain_events([_retention_event("tenancy")])[0]) == 1
