"""Audit benchmark on PostgreSQL: chained ingest throughput and ListEvents p99 at scale.

    .venv/bin/python bench/bench_audit.py                      # 200,000 stored events (quick)
    .venv/bin/python bench/bench_audit.py --events 1000000     # the 1M / 100 organizations figure

1. Ingest: events spread over 10 organizations, delivered in batches of 100 and
   of 1,000 — through a real audit gRPC server (token check, validation,
   chaining, idempotency check, insert) by 1, 4 and 8 concurrent callers, and
   straight into the store by 1 and 4; the baseline is a plain multi-row INSERT
   of the same rows without any chaining. ``ev/txn`` is the mean number of
   events per ingest transaction (group commit), from the store's counter (the
   audit server's, asked through the child process's pipe).
2. ListEvents: ``--events`` properly chained events across 100 organizations
   are bulk-loaded with COPY, then the newest page (50) of a random
   organization is read as that organization's admin, through gRPC with a real
   authz server deciding access; the baselines are the bare SQL query and the
   authz CheckCapability alone.

Everything is bounded: fixed event counts, fixed sample counts, and a
``--max-seconds`` guard on every phase. Figures go to docs/audit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import pathlib
import random
import statistics
import sys
import tempfile
import time

import grpc
import psycopg

from gatehouse.audit.v1 import audit_service_pb2 as pb
from gatehouse.audit.v1 import audit_service_pb2_grpc
from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc, relationship_pb2
from gatehouse.kit import audit_log
from gatehouse.kit.app import build_server
from gatehouse.kit.db import Database
from gatehouse.kit.keys import issue_token, public_jwk
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse.testing.db import create_pg_database, drop_pg_database
from gatehouse.testing.servers import settings_for
from gatehouse.testing.tokens import TokenMint
from gatehouse.type.v1 import refs_pb2
from gatehouse_audit import server as audit_server
from gatehouse_audit.adapters.config import AuditConfig, generate_keys_env
from gatehouse_audit.adapters.store import EVENT_FIELDS, AuditStore
from gatehouse_audit.adapters.tables import events as events_table
from gatehouse_audit.api.convert import event_from_pb
from gatehouse_audit.domain.chain import GENESIS
from gatehouse_audit.domain.model import Event, EventFilter
from gatehouse_audit.server import MIGRATIONS
from gatehouse_audit.server import build as build_audit
from gatehouse_authz.server import build as build_authz

LIST_ORGS = 100
INGEST_ORGS = 10


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def make_event(org: str, i: int):
    return audit_log.build_event(
        service="tenancy",
        action="tenancy.workspace.update",
        actor=audit_log.Actor("user", f"user-{i % 500}", f"user-{i % 500}@example.com"),
        organization_id=org,
        workspace_id=f"{org}-ws-{i % 20}",
        target=("workspace", f"{org}-ws-{i % 20}"),
        details={"name": {"old": f"name {i}", "new": f"name {i + 1}"}},
    )


def _serve(kind: str, tmp: str, url: str, jwk: dict, token: str, keys: dict, authz_port: int, pipe) -> None:
    """Child process: one real server (authz or audit) trusting the bench's token key, until told to stop."""
    asyncio.run(_serve_async(kind, pathlib.Path(tmp), url, jwk, token, keys, authz_port, pipe))


async def _serve_async(kind, tmp, url, jwk, token, keys, authz_port, pipe) -> None:
    from gatehouse.kit.auth import JwksCache, TokenVerifier

    async def fetch() -> list[dict]:
        return [jwk]

    async def token_source() -> str:
        return token

    verifier = TokenVerifier(JwksCache(fetch), issuer="gatehouse", audience="gatehouse").verify
    settings = settings_for(
        tmp / kind, service=kind, database_url=url, authz_address=f"127.0.0.1:{authz_port}"
    )

    def builder(settings, runtime):
        if kind == "audit":
            audit_server.AuditStore = _tracked
            spec = build_audit(settings, runtime, environ=keys, token_source=token_source)
        else:
            spec = build_authz(settings, runtime)
        spec.verifier, spec.depends_on = verifier, ()
        return spec

    server = build_server(settings, builder)
    pipe.send(await server.start())
    await server.wait_started()
    pipe.send("ready")
    while await asyncio.to_thread(pipe.recv) == "transactions":
        pipe.send(sum(store.transactions for store in _stores))
    await server.stop(0)


_stores: list[AuditStore] = []  # the audit server's stores (child process), for their counters


def _tracked(*args) -> AuditStore:
    _stores.append(AuditStore(*args))
    return _stores[-1]


class Child:
    """A server in its own process, so client and server do not share one Python thread."""

    def __init__(
        self, kind: str, tmp: pathlib.Path, url: str, mint: TokenMint, keys: dict, authz_port: int = 1
    ):
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child_end = ctx.Pipe()
        token = issue_token(
            mint.key,
            issuer="gatehouse",
            audience="gatehouse",
            subject=kind,
            principal_type="service",
            ttl_seconds=7200,
        )
        self.process = ctx.Process(
            target=_serve,
            args=(kind, str(tmp), url, public_jwk(mint.key), token, keys, authz_port, child_end),
            daemon=True,
        )
        self.process.start()
        if not self.pipe.poll(60):
            raise RuntimeError(f"{kind} did not start")
        self.port = self.pipe.recv()
        if not self.pipe.poll(120) or self.pipe.recv() != "ready":
            raise RuntimeError(f"{kind} did not become ready")

    def transactions(self) -> int:
        """The audit server's ingest transactions so far."""
        self.pipe.send("transactions")
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(15)
        if self.process.is_alive():
            self.process.kill()


# ---- ingest -------------------------------------------------------------------
async def bench_ingest(
    stub, store: AuditStore, db: Database, svc, server: Child, total: int, deadline: float
) -> None:
    print(f"\n== ingest with chaining (PostgreSQL, {total:,} events per run, {INGEST_ORGS} organizations)")
    print(f"{'batch':>6} {'path':<34} {'events/s':>10} {'vs plain INSERT':>16} {'ev/txn':>7}")
    counter = iter(range(1, 10 * total + 1))

    def batches_of(size: int, prefix: str) -> list[list]:
        messages = [make_event(f"{prefix}-org-{i % INGEST_ORGS}", i) for i in range(total)]
        return [messages[i : i + size] for i in range(0, total, size)]

    def check(deadline_what: str) -> None:
        if time.time() > deadline:
            sys.exit(f"{deadline_what} exceeded --max-seconds")

    async def run(label: str, batches: list, send, callers: int, transactions) -> None:
        """``callers`` concurrent callers send their share of ``batches``, one call at a time."""

        async def caller(part: list) -> None:
            for batch in part:
                check("ingest")
                await send(batch)

        before = transactions()
        started = time.perf_counter()
        await asyncio.gather(*(caller(batches[k::callers]) for k in range(callers)))
        rate = total / (time.perf_counter() - started)
        rows.append((label, rate, total / max(1, transactions() - before)))

    async def grpc_call(batch: list) -> None:
        await stub.IngestEvents(pb.IngestEventsRequest(events=batch), metadata=svc, timeout=60)

    commits = 0  # of the plain INSERT baseline

    async def plain_insert(batch: list[dict]) -> None:
        nonlocal commits
        async with db.unit_of_work() as uow:
            await uow.session.execute(events_table.insert(), batch)
            await uow.commit()
        commits += 1

    for size in (100, 1000):
        rows: list[tuple[str, float, float | None]] = []
        # baseline: the same rows, one committed plain INSERT per batch: no lock, no hash, no duplicate check
        plain = [
            [_row(event_from_pb(m, "", _Sink()), -next(counter)) for m in b]
            for b in batches_of(size, "plain")
        ]
        await run("plain INSERT, 1 caller (baseline)", plain, plain_insert, 1, lambda: commits)
        batches = batches_of(size, "grpc")
        await run("gRPC IngestEvents, 1 caller", batches, grpc_call, 1, server.transactions)
        for callers in (4, 8):
            label = f"gRPC IngestEvents, {callers} callers"
            await run(label, batches_of(size, f"grpc{callers}"), grpc_call, callers, server.transactions)
        for label, callers in (
            ("store.ingest (no gRPC), 1 caller", 1),
            ("store.ingest (no gRPC), 4 callers", 4),
        ):
            converted = [[event_from_pb(m, "", _Sink()) for m in b] for b in batches_of(size, f"s{callers}")]
            await run(label, converted, store.ingest, callers, lambda: store.transactions)

        started = time.perf_counter()
        answers = [await stub.IngestEvents(pb.IngestEventsRequest(events=b), metadata=svc) for b in batches]
        rows.append(("redelivery (all duplicates)", total / (time.perf_counter() - started), None))
        assert all(
            a.accepted_count == 0 and a.duplicate_count == len(b)
            for a, b in zip(answers, batches, strict=False)
        )

        base = rows[0][1]
        for label, rate, per_transaction in rows:
            grouped = "-" if per_transaction is None else f"{per_transaction:,.0f}"
            print(f"{size:>6} {label:<34} {rate:>10,.0f} {rate / base:>15.2f}x {grouped:>7}")


class _Sink:
    def add(self, name, description):
        raise ValueError(f"{name}: {description}")


def _row(e: Event, sequence: int) -> dict:
    e.sequence, e.prev_hash, e.hash, e.key_id, e.ingest_us = sequence, b"", b"", "", 0
    return {n: getattr(e, n) for n in EVENT_FIELDS}


# ---- bulk load ----------------------------------------------------------------
def bulk_load(pg_url: str, config: AuditConfig, total: int) -> float:
    """COPY ``total`` properly chained events across LIST_ORGS organizations; returns seconds."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    per_org = total // LIST_ORGS
    now_us = time.time_ns() // 1000
    span = 300 * 86_400 * 1_000_000
    columns = ", ".join(EVENT_FIELDS)
    started = time.perf_counter()
    heads = []
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
            for o in range(LIST_ORGS):
                org = f"org-{o:03d}"
                prev = GENESIS
                for n in range(per_org):
                    occur = now_us - span + (span * n) // per_org
                    e = Event(
                        id=f"{org}-{n:08d}",
                        occur_us=occur,
                        ingest_us=occur + 1000,
                        service="tenancy",
                        action="tenancy.workspace.update" if n % 3 else "identity.login.succeeded",
                        actor_type="user",
                        actor_id=f"{org}-user-{n % 50}",
                        actor_display=f"user{n % 50}@example.com",
                        organization_id=org,
                        workspace_id=f"{org}-ws-{n % 20}",
                        target_type="workspace",
                        target_id=f"{org}-ws-{n % 20}",
                        details='{"name":{"new":"b","old":"a"}}',
                        sequence=n + 1,
                    )
                    config.chain_key.link(e, prev)
                    prev = e.hash
                    copy.write_row([getattr(e, f) for f in EVENT_FIELDS])
                heads.append((org, per_org, prev))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO audit_chains VALUES (%s, %s, %s, 0, ''::bytea, ''::bytea)",
                [(o, s, h) for o, s, h in heads],
            )
            cur.execute("ANALYZE audit_events")
        conn.commit()
    return time.perf_counter() - started


async def bench_list(
    stub, authz_stub, store: AuditStore, mint: TokenMint, samples: int, deadline: float
) -> None:
    svc = mint.md(mint.service("tenancy"))
    orgs = [f"org-{o:03d}" for o in range(LIST_ORGS)]
    rng = random.Random(7)
    tokens = {org: mint.md(mint.user(f"admin-{org}")) for org in orgs}
    series: dict[str, list[float]] = {"sql": [], "cold": [], "warm": [], "check": []}

    async def list_page(org: str) -> float:
        t0 = time.perf_counter()
        answer = await stub.ListEvents(
            pb.ListEventsRequest(filter=pb.EventFilter(organization_id=org), page_size=50),
            metadata=tokens[org],
        )
        elapsed = (time.perf_counter() - t0) * 1000
        assert len(answer.events) == 50 and answer.next_page_token
        assert all(e.organization_id == org for e in answer.events)
        return elapsed

    # cold: each organization admin's first page (audit asks authz; nothing cached for that reader yet)
    for org in orgs:
        series["cold"].append(await list_page(org))
    for i in range(samples + 20):
        if time.time() > deadline:
            sys.exit("list bench exceeded --max-seconds")
        org = rng.choice(orgs)
        t0 = time.perf_counter()
        page = await store.list(EventFilter(organization_ids=(org,)), 51)
        t1 = time.perf_counter()
        warm = await list_page(org)
        t2 = time.perf_counter()
        await authz_stub.CheckCapability(
            apb.CheckCapabilityRequest(
                subject=refs_pb2.SubjectRef(type="user", id=f"admin-{org}"),
                resource=refs_pb2.ResourceRef(type="organization", id=org),
                capability="org:read_audit",
            ),
            metadata=svc,
        )
        t3 = time.perf_counter()
        assert len(page) == 51
        if i >= 20:  # warm-up excluded
            series["sql"].append((t1 - t0) * 1000)
            series["warm"].append(warm)
            series["check"].append((t3 - t2) * 1000)
    print(f"\n== ListEvents newest page (50) of one organization ({LIST_ORGS} cold + {samples} warm samples)")
    print(f"{'path':<52} {'p50 ms':>8} {'p99 ms':>8}")
    for label, key in (
        ("SQL keyset query (store.list, baseline)", "sql"),
        ("authz CheckCapability alone (baseline)", "check"),
        ("gRPC ListEvents, reader's first call (authz asked)", "cold"),
        ("gRPC ListEvents, repeat reader (decision cached)", "warm"),
    ):
        values = series[key]
        print(f"{label:<52} {statistics.median(values):>8.2f} {pct(values, 99):>8.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="stored events for ListEvents (1000000 for the target)"
    )
    parser.add_argument("--ingest-events", type=int, default=20_000, help="events per ingest run")
    parser.add_argument("--samples", type=int, default=300, help="ListEvents samples (warm)")
    parser.add_argument("--max-seconds", type=float, default=900, help="abort if a phase runs longer")
    args = parser.parse_args()
    if not (1_000 <= args.events <= 2_000_000 and 1_000 <= args.ingest_events <= 200_000):
        sys.exit("--events in [1,000, 2,000,000], --ingest-events in [1,000, 200,000]")
    deadline = time.time() + args.max_seconds
    name, url = create_pg_database()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-audit-"))
    servers: list[Child] = []
    try:
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, url)
        mint, keys = TokenMint(), generate_keys_env()
        config = AuditConfig.load(tmp, keys)
        authz = Child("authz", tmp, f"sqlite+aiosqlite:///{tmp / 'authz.db'}", mint, keys)
        servers.append(authz)
        audit = Child("audit", tmp, url, mint, keys, authz_port=authz.port)
        servers.append(audit)
        db = Database(url)
        store = AuditStore(db, config.chain_key)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{audit.port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{authz.port}") as authz_channel,
        ):
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            authz_stub = authz_service_pb2_grpc.AuthzServiceStub(authz_channel)
            svc = mint.md(mint.service("tenancy"))
            await bench_ingest(stub, store, db, svc, audit, args.ingest_events, deadline)
            await grant_org_admins(authz_stub, svc)
            seconds = await asyncio.to_thread(bulk_load, url, config, args.events)
            print(
                f"\n== bulk load: {args.events:,} chained events across {LIST_ORGS} organizations with COPY "
                f"in {seconds:.1f} s ({args.events / seconds:,.0f} rows/s, indexes in place)"
            )
            await bench_list(stub, authz_stub, store, mint, args.samples, deadline)
            verdict = await audit_verify_one(store, config)
            print(
                f"\nVerifyChain of one bulk-loaded organization: ok={verdict.ok} checked={verdict.checked:,}"
            )
        await db.dispose()
    finally:
        for server in reversed(servers):
            server.stop()
        drop_pg_database(name)


async def grant_org_admins(authz_stub, svc) -> None:
    touch = relationship_pb2.RelationshipUpdate.Operation.OPERATION_TOUCH
    updates = []
    for o in range(LIST_ORGS):
        org, admin = f"org-{o:03d}", f"admin-org-{o:03d}"
        rel = relationship_pb2.Relationship(
            resource=refs_pb2.ResourceRef(type="organization", id=org),
            relation="admin",
            subject=refs_pb2.SubjectRef(type="user", id=admin),
        )
        state = relationship_pb2.MembershipState(
            organization_id=org, user_id=admin, status=relationship_pb2.MEMBERSHIP_STATUS_ACTIVE
        )
        updates += [
            relationship_pb2.RelationshipUpdate(operation=touch, relationship=rel),
            relationship_pb2.RelationshipUpdate(operation=touch, membership_state=state),
        ]
    await authz_stub.WriteRelationships(apb.WriteRelationshipsRequest(updates=updates), metadata=svc)


async def audit_verify_one(store: AuditStore, config: AuditConfig):
    from gatehouse_audit.domain.usecases import Audit

    return await Audit(store, config.chain_key, config.signer).verify("org-000")


if __name__ == "__main__":
    asyncio.run(main())
