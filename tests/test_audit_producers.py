"""Cross-service audit delivery: what identity, tenancy and authz do reaches audit, exactly once.

Real identity, authz, audit and tenancy servers (``gatehouse.testing.cluster``),
real tokens, each service with its own database; tenancy's and audit's on
SQLite and on PostgreSQL. Every event travels the production path: the
producer's ``audit_log.record`` in its own transaction, its ``audit_relay`` in
the background, audit's ``IngestEvents``; the trail is read back through
``ListEvents`` as a platform admin.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import signal
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from gatehouse.audit.v1 import audit_event_pb2 as epb
from gatehouse.audit.v1 import audit_service_pb2 as apb
from gatehouse.identity.v1 import identity_service_pb2 as ipb
from gatehouse.kit.outbox import OutboxRelay
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import setup_service_pb2 as spb
from gatehouse.tenancy.v1 import setup_service_pb2_grpc, workspace_service_pb2_grpc
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.testing.cluster import Cluster, list_events, pending_audit, query, running_cluster, wait_for
from gatehouse.testing.db import make_database_url
from gatehouse.testing.identity import DEFAULT_PASSWORD
from gatehouse.type.v1 import refs_pb2
from services.tenancy.tests.test_crash import TenancyProcess

pytestmark = pytest.mark.timeout(120)

WRONG_PASSWORD = "Not-The-Password-0001"
RETENTION_DAYS = 90
# Deadline of every call of the scripted run: generous for a loaded machine, and below the 10 s
# deadline of the producers' IngestEvents, so a caller waiting on audit would fail its call.
CALL_TIMEOUT = 8.0
# A batch the killed process had claimed for delivery stays leased to it for the relay's lease (the
# claim keeps two replicas from delivering one entry at once); only then may the restarted process
# take it. When the kill lands while a delivery attempt is in flight (or its failure not yet written
# back), the restarted producer needs that long: observed under load with the bootstrap event.
RESTART_WAIT = inspect.signature(OutboxRelay).parameters["lease"].default + 15.0

# (service, action, outcome) of every event the scripted run produces, with its count. The authz
# writes are tenancy's relationship deliveries: bootstrap (platform admin + organization owner),
# the new member's role and membership, the workspace's parent and owner, the member added, the
# role changed. The organization update changes only a setting authz does not hold: no write.
HALF_ONE = Counter(
    {
        ("identity", "identity.user.created", "SUCCESS"): 2,  # the bootstrap admin, bob
        ("tenancy", "tenancy.setup.bootstrap", "SUCCESS"): 1,
        ("identity", "identity.login.succeeded", "SUCCESS"): 2,  # root, bob
        ("identity", "identity.login.failed", "DENIED"): 1,  # root with a wrong password
        ("tenancy", "tenancy.organization.create_member", "SUCCESS"): 1,
        ("authz", "authz.relationships.write", "SUCCESS"): 2,
    }
)
HALF_TWO = Counter(
    {
        ("tenancy", "tenancy.workspace.create", "SUCCESS"): 1,
        ("tenancy", "tenancy.workspace.add_member", "SUCCESS"): 1,
        ("tenancy", "tenancy.workspace.update_member", "SUCCESS"): 1,
        ("tenancy", "tenancy.workspace.delete", "DENIED"): 1,  # bob, a viewer
        ("tenancy", "tenancy.organization.update", "SUCCESS"): 1,  # settings.audit_retention_days
        ("authz", "authz.relationships.write", "SUCCESS"): 3,
    }
)
EXPECTED = HALF_ONE + HALF_TWO


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def key(event) -> tuple[str, str, str]:
    return event.service, event.action, epb.Outcome.Name(event.outcome).removeprefix("OUTCOME_")


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request, tmp_path):
    """Fresh databases for tenancy (the producer's outbox) and audit (the store), of one kind."""
    cleanups: list = []
    tenancy = make_database_url(request.param, tmp_path, "tenancy", cleanups)
    audit = make_database_url(request.param, tmp_path, "audit", cleanups)
    yield {"tenancy_database_url": tenancy, "audit_database_url": audit}
    for cleanup in cleanups:
        cleanup()


@dataclass
class Run:
    """What the scripted run created, and the time window its events fall into."""

    start: dt.datetime
    end: dt.datetime | None = None
    org_id: str = ""
    root_id: str = ""
    root: list | None = None
    bob_id: str = ""
    ws_id: str = ""


async def login(c: Cluster, email: str, password: str = DEFAULT_PASSWORD) -> str:
    answer = await c.identity.stub.Login(
        ipb.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT
    )
    return answer.access_token


async def bootstrap(setup: setup_service_pb2_grpc.SetupServiceStub) -> spb.BootstrapResponse:
    return await setup.Bootstrap(
        spb.BootstrapRequest(
            admin_email="root@example.com",
            admin_password=DEFAULT_PASSWORD,
            organization_name="Acme",
            organization_slug="acme",
        ),
        timeout=CALL_TIMEOUT,
    )


async def first_half(c: Cluster) -> Run:
    """Bootstrap, a good and a bad login, a new organization member who logs in."""
    run = Run(start=dt.datetime.now(dt.UTC))
    boot = await bootstrap(c.setup)
    run.org_id, run.root_id = boot.organization.id, boot.admin_user_id
    run.root = md(await login(c, "root@example.com"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await login(c, "root@example.com", WRONG_PASSWORD)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    member = await c.orgs.CreateOrganizationMember(
        opb.CreateOrganizationMemberRequest(
            organization_id=run.org_id,
            email="bob@example.com",
            initial_password=DEFAULT_PASSWORD,
            role=r.ORG_ROLE_MEMBER,
        ),
        metadata=run.root,
        timeout=CALL_TIMEOUT,
    )
    run.bob_id = member.member.user_id
    return run


async def second_half(c: Cluster, run: Run) -> Run:
    """A workspace, bob added and made a viewer, bob's denied delete, the org's audit retention."""
    bob = md(await login(c, "bob@example.com"))
    ws = await c.workspaces.CreateWorkspace(
        wpb.CreateWorkspaceRequest(organization_id=run.org_id, name="Lab"),
        metadata=run.root,
        timeout=CALL_TIMEOUT,
    )
    run.ws_id = ws.workspace.id
    await c.workspaces.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(
            workspace_id=run.ws_id,
            principal=refs_pb2.SubjectRef(type="user", id=run.bob_id),
            role=r.WORKSPACE_ROLE_MEMBER,
        ),
        metadata=run.root,
        timeout=CALL_TIMEOUT,
    )
    await c.workspaces.UpdateWorkspaceMember(
        wpb.UpdateWorkspaceMemberRequest(
            workspace_id=run.ws_id, member_id=f"user:{run.bob_id}", role=r.WORKSPACE_ROLE_VIEWER
        ),
        metadata=run.root,
        timeout=CALL_TIMEOUT,
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await c.workspaces.DeleteWorkspace(
            wpb.DeleteWorkspaceRequest(workspace_id=run.ws_id), metadata=bob, timeout=CALL_TIMEOUT
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    update = r.Organization(id=run.org_id)
    update.settings.audit_retention_days = RETENTION_DAYS
    answer = await c.orgs.UpdateOrganization(
        opb.UpdateOrganizationRequest(
            organization=update,
            update_mask=field_mask_pb2.FieldMask(paths=["settings.audit_retention_days"]),
        ),
        metadata=run.root,
        timeout=CALL_TIMEOUT,
    )
    assert answer.organization.settings.audit_retention_days == RETENTION_DAYS
    run.end = dt.datetime.now(dt.UTC)
    return run


async def trail_of(c: Cluster, run: Run) -> list:
    """The run's events as audit answers them, once every producer's outbox is drained.

    Only the run's time window is read: before it the cluster provisioned itself (identity's
    service accounts and signing key), after it audit records our own cross-organization reads
    (``audit.events.read``); neither is part of the script.
    """
    assert await c.wait_delivered(timeout=20) == {"identity": 0, "authz": 0, "tenancy": 0}
    return await list_events(
        c.audit.stub, run.root, page_size=7, start_time=timestamp(run.start), end_time=timestamp(run.end)
    )


def assert_exactly_once(events) -> None:
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    assert Counter(key(e) for e in events) == EXPECTED


async def retention_in_audit(c: Cluster, org_id: str) -> tuple[int, str] | None:
    rows = await query(
        c.audit.database_url,
        "SELECT retention_days, source_event_id FROM audit_retention WHERE organization_id = :org",
        org=org_id,
    )
    return (rows[0].retention_days, rows[0].source_event_id) if rows else None


async def test_scripted_run_produces_exactly_the_expected_events(tmp_path, urls):
    async with running_cluster(tmp_path, **urls) as c:
        run = await second_half(c, await first_half(c))
        events = await trail_of(c, run)
        assert_exactly_once(events)

        by_action = {e.action: e for e in events}
        # who did what, where
        failed = by_action["identity.login.failed"]
        assert (failed.actor.type, failed.details["email"]) == ("anonymous", "root@example.com")
        assert WRONG_PASSWORD not in str(failed)
        denial = by_action["tenancy.workspace.delete"]
        assert (denial.actor.type, denial.actor.id) == ("user", run.bob_id)
        assert (denial.organization_id, denial.workspace_id) == (run.org_id, run.ws_id)
        assert by_action["tenancy.workspace.create"].actor.id == run.root_id
        role = by_action["tenancy.workspace.update_member"].details["role"]
        assert (role["old"], role["new"]) == ("member", "viewer")
        tenancy_events = [e for e in events if e.service == "tenancy"]
        assert {e.organization_id for e in tenancy_events} == {run.org_id}
        # the run is listed newest first
        times = [(e.occur_time.ToNanoseconds(), e.id) for e in events]
        assert times == sorted(times, reverse=True)

        # audit learned the organization's retention from tenancy's update event
        update = by_action["tenancy.organization.update"]
        assert await retention_in_audit(c, run.org_id) == (RETENTION_DAYS, update.id)


async def test_audit_down_during_the_run_delays_events_and_loses_none(tmp_path, urls):
    async with running_cluster(tmp_path, **urls) as c:
        run = await first_half(c)
        assert await c.wait_delivered(timeout=20) == {"identity": 0, "authz": 0, "tenancy": 0}
        await c.audit.stop()

        # every call of the second half succeeds while audit is down (second_half asserts each)
        await second_half(c, run)
        # ... and its events wait in the producers' outboxes, where delivery has been tried
        pending = await c.pending()
        # (tenancy delivers its authz writes right after commit; one that failed would still be queued
        # in tenancy, so authz's own count is only known to be positive here; the final count is exact)
        assert pending["tenancy"] == 5 and pending["identity"] == 1 and pending["authz"] >= 1, pending

        async def delivery_failed():
            rows = await query(
                c.tenancy_url,
                "SELECT count(*) FROM outbox WHERE topic = 'audit' AND delivered_at IS NULL"
                " AND last_error IS NOT NULL",
            )
            return rows[0][0]

        assert await wait_for(delivery_failed, timeout=20)

        await c.audit.start()  # same database, keys and port
        events = await trail_of(c, run)
        assert_exactly_once(events)

        for chain in (run.org_id, ""):  # the organization's and the platform's (identity's events)
            verdict = await c.audit.stub.VerifyChain(
                apb.VerifyChainRequest(organization_id=chain), metadata=run.root, timeout=10
            )
            assert verdict.ok, verdict
            assert verdict.checked_count >= 1
        org_events = await list_events(c.audit.stub, run.root, organization_id=run.org_id)
        assert (
            await c.audit.stub.VerifyChain(
                apb.VerifyChainRequest(organization_id=run.org_id), metadata=run.root, timeout=10
            )
        ).checked_count == len(org_events)


async def test_a_hanging_audit_never_blocks_the_callers(tmp_path):
    """Audit accepts connections but never answers: every call still completes in CALL_TIMEOUT.

    (SQLite only: no database is involved in whether a caller waits for audit.)
    """
    async with running_cluster(tmp_path, start_audit=False) as c:
        host, port = c.audit.address.rsplit(":", 1)
        held: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            await reader.read()  # reads until the relay gives up; never writes a byte

        hole = await asyncio.start_server(swallow, host, int(port))
        try:
            # the producers' channels reach the hanging audit (after the reconnect back-off of the
            # refusals they met before it listened): from now on each IngestEvents hangs until its deadline
            assert await wait_for(lambda: _true(held)), "no producer reached the hanging audit"
            run = await second_half(c, await first_half(c))  # each call within CALL_TIMEOUT
            # tenancy's relay was indeed stuck in IngestEvents meanwhile
            assert await wait_for(lambda: _deadline_exceeded(c.tenancy_url)), await _outbox_state(
                c.tenancy_url
            )
        finally:
            hole.close()
            for writer in held:
                writer.close()
            await hole.wait_closed()
        await c.audit.start()
        assert_exactly_once(await trail_of(c, run))


@pytest.mark.stack
async def test_producer_killed_after_commit_delivers_its_event_after_restart(tmp_path, urls):
    async with running_cluster(tmp_path, start_audit=False, start_tenancy=False, **urls) as c:
        data_dir = tmp_path / "tenancy-process"
        data_dir.mkdir()
        tenancy = TenancyProcess(c.identity, data_dir, c.tenancy_url)
        channel = None
        try:
            # audit is not running: nothing tenancy commits can be delivered before the kill
            await tenancy.start(crash_after="workspace.create")
            channel = grpc.aio.insecure_channel(tenancy.address)
            org_id = (await bootstrap(setup_service_pb2_grpc.SetupServiceStub(channel))).organization.id
            root = md(await c.identity.login("root@example.com"))
            request = wpb.CreateWorkspaceRequest(
                organization_id=org_id, name="Survivor", request_id="crash-1"
            )
            workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await workspaces.CreateWorkspace(request, metadata=root, timeout=15)
            assert await tenancy.wait_dead() == -signal.SIGKILL
            await channel.close()

            # the change is committed, and so is its event, undelivered
            undelivered = await _undelivered_events(c.tenancy_url)
            created = [e for e in undelivered if e.action == "tenancy.workspace.create"]
            assert len(created) == 1, [e.action for e in undelivered]
            event_id, ws_id = created[0].id, created[0].workspace_id
            assert [row.id for row in await query(c.tenancy_url, "SELECT id FROM workspaces")] == [ws_id]

            await c.audit.start()
            await tenancy.start()
            channel = grpc.aio.insecure_channel(tenancy.address)
            workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)

            async def arrived():
                answer = await list_events(
                    c.audit.stub, root, organization_id=org_id, action_prefix="tenancy.workspace.create"
                )
                return answer if answer and not await pending_audit(c.tenancy_url) else None

            # nothing is lost: every event the dead process left undelivered arrives
            assert await wait_for(arrived, timeout=RESTART_WAIT), await _outbox_state(c.tenancy_url)
            # the client's retry answers the same workspace and records nothing new
            again = await workspaces.CreateWorkspace(request, metadata=root, timeout=15)
            assert again.workspace.id == ws_id
            assert await c.wait_delivered(timeout=RESTART_WAIT) == {"identity": 0, "authz": 0, "tenancy": 0}

            trail = await list_events(c.audit.stub, root, organization_id=org_id)
            assert len({e.id for e in trail}) == len(trail)
            creates = [e for e in trail if e.action == "tenancy.workspace.create"]
            assert [(e.id, e.workspace_id) for e in creates] == [(event_id, ws_id)]
            tenancy_actions = Counter(e.action for e in trail if e.service == "tenancy")
            assert tenancy_actions == {"tenancy.setup.bootstrap": 1, "tenancy.workspace.create": 1}
            verdict = await c.audit.stub.VerifyChain(
                apb.VerifyChainRequest(organization_id=org_id), metadata=root, timeout=10
            )
            assert verdict.ok and verdict.checked_count == len(trail), verdict
        finally:
            if channel is not None:
                await channel.close()
            tenancy.stop()


async def _undelivered_events(url: str) -> list:
    from gatehouse.audit.v1 import audit_event_pb2

    rows = await query(url, "SELECT payload FROM outbox WHERE topic = 'audit' AND delivered_at IS NULL")
    return [audit_event_pb2.AuditEvent.FromString(bytes(row.payload)) for row in rows]


async def _outbox_state(url: str) -> list:
    """Diagnostics for a failed wait: every audit entry of the producer's outbox."""
    return await query(
        url,
        "SELECT id, attempts, claimed_until, delivered_at, last_error FROM outbox WHERE topic = 'audit'",
    )


async def _true(value) -> bool:
    return bool(value)


async def _deadline_exceeded(url: str) -> int:
    """Audit entries whose last delivery attempt hung (not refused): it ran into the call's deadline,
    or into gRPC's connect timeout on a connection that never got the server's SETTINGS frame."""
    rows = await query(
        url,
        "SELECT count(*) FROM outbox WHERE topic = 'audit' AND (last_error LIKE '%DEADLINE_EXCEEDED%'"
        " OR last_error LIKE '%before receiving SETTINGS frame%')",
    )
    return rows[0][0]
