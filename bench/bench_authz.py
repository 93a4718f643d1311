"""Authz benchmark: the real server on PostgreSQL against a no-op grpc.aio unary server.

One command (``python bench/bench_authz.py``; ``--full`` for the 1,000,000-relationship case):

1. creates a throw-away PostgreSQL database per scale on 127.0.0.1:5432, applies the authz
   migrations and bulk-loads generated data (COPY): organizations of 100 workspaces, each
   workspace with 8 user and 2 group role bindings (10 relationships), groups of 10 members,
   one user ("lookup") who is viewer in 100 workspaces spread over the whole data set, and per
   organization one disabled user and one deleted workspace;
2. starts the servers as their own processes (``bench/authz_server.py``): a no-op grpc.aio
   unary server on the standard asyncio loop (the issue's baseline), the same no-op on uvloop,
   and again in a process set up as the services' are (uvloop and the grpc core settings of
   ``gatehouse.kit.grpc_settings``), so ratios can be read like for like; and authz
   (``gatehouse_authz``, all of the kit, real ES256 tokens, on ``GATEHOUSE_EVENT_LOOP``);
3. drives each with the same load generator (grpc.aio, N calls in flight, on loopback) for a
   bounded time and prints throughput, p50/p99 latency, server CPU per request (from
   /proc/<pid>/stat), index load time and resident memory, and the ratios to the targets.

Everything is bounded: each phase runs ``--duration`` seconds, visibility probes are counted,
and every process this command starts is stopped by its own handle at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import pathlib
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import psycopg

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from authz_server import NOOP_METHOD  # noqa: E402

from gatehouse.authz.v1 import authz_service_pb2 as pb  # noqa: E402
from gatehouse.authz.v1 import authz_service_pb2_grpc, relationship_pb2  # noqa: E402
from gatehouse.kit.keys import generate_signing_key, issue_token, public_jwk  # noqa: E402
from gatehouse.kit.migrations import upgrade_to_head  # noqa: E402
from gatehouse.type.v1 import refs_pb2  # noqa: E402
from gatehouse_authz.domain.catalog import load_catalog  # noqa: E402
from gatehouse_authz.server import MIGRATIONS  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
CHECK = "/gatehouse.authz.v1.AuthzService/CheckCapability"
BATCH = "/gatehouse.authz.v1.AuthzService/CheckCapabilities"
LOOKUP = "/gatehouse.authz.v1.AuthzService/LookupResources"
WS_PER_ORG, USERS_PER_ORG, GROUPS_PER_ORG, GROUP_SIZE = 100, 100, 10, 10
USER_BINDINGS, GROUP_BINDINGS = 8, 2
ROLES = ["owner", "admin", "member", "member", "viewer", "viewer", "viewer", "viewer"]
CLK = os.sysconf("SC_CLK_TCK")


# ---- data -------------------------------------------------------------------------------
class Dataset:
    def __init__(self, workspaces: int, seed: int = 7):
        self.workspaces = workspaces
        self.orgs = max(1, workspaces // WS_PER_ORG)
        self.rng = random.Random(seed)
        self.bindings: list[tuple[str, str]] = []  # (user, workspace) with a direct role
        self.lookup_workspaces = sorted(
            {f"w{i * max(1, workspaces // 100)}" for i in range(min(100, workspaces))}
        )

    def org_of(self, i: int) -> int:
        return min(i // WS_PER_ORG, self.orgs - 1)

    def rows(self):
        """(relationships rows, states rows) as tab-separated COPY text."""
        rels, states = io.StringIO(), io.StringIO()
        count = 0

        def rel(rt, rid, relation, st, sid, cap=""):
            nonlocal count
            rels.write(f"{rt}\t{rid}\t{relation}\t{st}\t{sid}\t{cap}\t1\n")
            count += 1

        for o in range(self.orgs):
            rel("organization", f"o{o}", "owner", "user", f"u{o}_0")
            rel("organization", f"o{o}", "admin", "user", f"u{o}_1")
            for k in range(USERS_PER_ORG):
                states.write(f"membership\to{o}|u{o}_{k}\tACTIVE\t1\n")
            for g in range(GROUPS_PER_ORG):
                rel("group", f"g{o}_{g}", "parent", "organization", f"o{o}")
                for k in range(GROUP_SIZE):
                    rel("group", f"g{o}_{g}", "member", "user", f"u{o}_{g * GROUP_SIZE + k}")
        lookup = set(self.lookup_workspaces)
        lookup_orgs = set()
        for i in range(self.workspaces):
            o, ws = self.org_of(i), f"w{i}"
            rel("workspace", ws, "parent", "organization", f"o{o}")
            for role, k in zip(ROLES, self.rng.sample(range(2, USERS_PER_ORG), USER_BINDINGS), strict=True):
                rel("workspace", ws, role, "user", f"u{o}_{k}")
                self.bindings.append((f"u{o}_{k}", ws))
            rel("workspace", ws, "member", "group", f"g{o}_{i % GROUPS_PER_ORG}")
            rel("workspace", ws, "viewer", "group", f"g{o}_{(i + 3) % GROUPS_PER_ORG}")
            if ws in lookup:
                rel("workspace", ws, "viewer", "user", "lookup")
                lookup_orgs.add(o)
        for o in sorted(lookup_orgs):
            states.write(f"membership\to{o}|lookup\tACTIVE\t1\n")
        # As in a live system, some users are disabled and some workspaces deleted (kept until
        # purged), so every check looks those up in non-empty sets: one of each per organization.
        for o in range(self.orgs):
            states.write(f"disabled\tuser:u{o}_{USERS_PER_ORG - 1}\t1\t1\n")
            last = f"w{min(self.workspaces, (o + 1) * WS_PER_ORG) - 1}"
            if last not in lookup:
                states.write(f"deleted\tworkspace:{last}\t1\t1\n")
        return rels.getvalue(), states.getvalue(), count


def create_database(label: str) -> tuple[str, str]:
    name = f"gh_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_data(url: str, data: Dataset) -> int:
    upgrade_to_head(MIGRATIONS, url)
    rels, states, count = data.rows()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cols = "resource_type, resource_id, relation, subject_type, subject_id, capability, revision"
            with cur.copy(f"COPY relationships ({cols}) FROM STDIN") as copy:
                copy.write(rels)
            with cur.copy("COPY states (kind, key, value, revision) FROM STDIN") as copy:
                copy.write(states)
            cur.execute("UPDATE authz_meta SET revision = 1 WHERE id = 1")
        conn.commit()
        conn.execute("ANALYZE")
    return count


# ---- processes --------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str, env: dict[str, str], timeout: float = 180.0):
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "authz_server.py"), kind],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = _readline(self.proc, timeout)
        info = json.loads(line)
        self.port, self.load_seconds = info["port"], info["load_seconds"]
        self.start_seconds = time.monotonic() - started
        self.pid = self.proc.pid

    def cpu_seconds(self) -> float:
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ServerGroup:
    """Several authz processes sharing one port (SO_REUSEPORT): the kernel spreads connections."""

    def __init__(self, count: int, env: dict[str, str]):
        with socket.socket() as probe:  # a free port for the group
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**env, "GATEHOUSE_LISTEN_ADDRESS": f"127.0.0.1:{port}", "BENCH_REUSEPORT": "1"}
        self.servers = [Server("authz", env) for _ in range(count)]
        self.port = port
        self.proc = self.servers[0].proc

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)

    def rss_mb(self) -> float:
        return sum(s.rss_mb() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise RuntimeError(f"server did not start within {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"server exited with {proc.wait()}")
    return line


# ---- load generator ---------------------------------------------------------------------
async def drive(
    server: Server,
    method: str,
    payloads: list[bytes],
    md,
    *,
    concurrency: int,
    duration: float,
    channels: int = 1,
):
    """Calls ``method`` with ``concurrency`` in flight for ``duration`` s over ``channels``
    connections (the workers take turns); figures of the run."""
    address = f"127.0.0.1:{server.port}"
    # distinct channel arguments: grpc would otherwise share one connection between the channels
    opened = [
        grpc.aio.insecure_channel(address, options=[("gatehouse.bench.channel", k)]) for k in range(channels)
    ]
    try:
        rpcs = [channel.unary_unary(method) for channel in opened]
        for k, p in enumerate(payloads[:100]):  # warm-up
            await rpcs[k % channels](p, metadata=md, timeout=10)
        latencies: list[float] = []
        stop = time.monotonic() + duration

        async def worker(k: int) -> None:
            i, rpc = k, rpcs[k % channels]
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                await rpc(payloads[i % len(payloads)], metadata=md, timeout=10)
                latencies.append(time.perf_counter() - t0)
                i += concurrency

        cpu0, t0, mine0 = server.cpu_seconds(), time.monotonic(), time.process_time()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed, cpu = time.monotonic() - t0, server.cpu_seconds() - cpu0
        client_cpu = time.process_time() - mine0
    finally:
        for channel in opened:
            await channel.close()
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
        "cpu_us": cpu / n * 1e6,
        "client_cpu_us": client_cpu / n * 1e6,
        "calls": n,
    }


def median_run(runs: list[dict]) -> dict:
    """Per-figure medians over interleaved rounds."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def check_payloads(data: Dataset, count: int, rng: random.Random) -> list[bytes]:
    caps = sorted(load_catalog().types["workspace"].capabilities)
    out = []
    for _ in range(count):
        if rng.random() < 0.8:
            user, ws = rng.choice(data.bindings)
        else:  # someone of the same organization without a direct role (group, org role or nothing)
            i = rng.randrange(data.workspaces)
            user, ws = f"u{data.org_of(i)}_{rng.randrange(USERS_PER_ORG)}", f"w{i}"
        out.append(check_request(user, ws, rng.choice(caps)))
    return out


def check_request(user: str, ws: str, cap: str) -> pb.CheckCapabilityRequest:
    return pb.CheckCapabilityRequest(
        subject=refs_pb2.SubjectRef(type="user", id=user),
        resource=refs_pb2.ResourceRef(type="workspace", id=ws),
        capability=cap,
    )


def index_lookup_times(data: Dataset, rounds: int) -> dict:
    """The server's lookup work without the RPC: the same Index code over the same rows."""
    from gatehouse_authz.domain.index import Index

    rels, states, _ = Dataset(data.workspaces).rows()  # same seed: the same rows as in the database
    index = Index(load_catalog())
    index.load_rows(
        (tuple(line.split("\t")[:6]) for line in rels.splitlines()),
        (tuple(line.split("\t")[:3]) for line in states.splitlines()),
    )
    del rels, states
    gc.collect()
    gc.freeze()  # as the server does after loading its index
    times, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.thread_time()
        found = index.lookup_resources(("user", "lookup"), "workspace", "chat")
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    assert found == sorted(data.lookup_workspaces), "lookup answer is not the generated one"
    times.sort()
    cpu.sort()
    return {
        "p50_ms": times[len(times) // 2] * 1e3,
        "p99_ms": times[int(len(times) * 0.99)] * 1e3,
        "cpu_p99_ms": cpu[int(len(cpu) * 0.99)] * 1e3,
    }


# ---- cross-replica visibility -------------------------------------------------------------
async def visibility(a: Server, b: Server, md, probes: int) -> list[float]:
    """Write through ``a``, then ask ``b`` (no at_least_revision) until it allows; lag per write."""
    lags = []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ca,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as cb,
    ):
        writer, reader = (
            authz_service_pb2_grpc.AuthzServiceStub(ca),
            authz_service_pb2_grpc.AuthzServiceStub(cb),
        )
        for i in range(probes):
            user = f"vis{i}_{uuid.uuid4().hex[:6]}"
            update = relationship_pb2.RelationshipUpdate(
                operation=relationship_pb2.RelationshipUpdate.OPERATION_TOUCH,
                relationship=relationship_pb2.Relationship(
                    resource=refs_pb2.ResourceRef(type="workspace", id="w0"),
                    relation="viewer",
                    subject=refs_pb2.SubjectRef(type="user", id=user),
                ),
            )
            await writer.WriteRelationships(pb.WriteRelationshipsRequest(updates=[update]), metadata=md)
            started = time.perf_counter()
            for _ in range(2000):  # bounded: at most ~2 s per probe
                if (await reader.CheckCapability(check_request(user, "w0", "chat"), metadata=md)).allowed:
                    break
                await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    return lags


# ---- main ---------------------------------------------------------------------------------
def fmt(r: dict) -> str:
    return (
        f"{r['rps']:8.0f}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
        f"server CPU {r['cpu_us']:5.0f} µs/call, client {r['client_cpu_us']:4.0f}  ({r['calls']} calls)"
    )


def credentials(tmp: str) -> tuple[tuple, dict[str, str]]:
    """A fresh signing key: the metadata of a service token it signed, and the environment of
    server processes that trust it (``bench/authz_server.py`` reads ``BENCH_JWK``)."""
    key = generate_signing_key()
    token = issue_token(
        key,
        issuer="gatehouse",
        audience="gatehouse",
        subject="bench",
        principal_type="service",
        ttl_seconds=3600,
    )
    env = {
        **os.environ,
        "BENCH_JWK": json.dumps(public_jwk(key)),
        "GATEHOUSE_LISTEN_ADDRESS": "127.0.0.1:0",
        "GATEHOUSE_DATA_DIR": tmp,
        "GATEHOUSE_LOG_LEVEL": "WARNING",
    }
    return (("authorization", f"Bearer {token}"),), env


async def main(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="gh-bench-")
    md, base_env = credentials(tmp)
    rng = random.Random(11)
    small, large = Dataset(args.small), Dataset(args.large)
    databases, servers = [], []
    results: dict[str, dict] = {}
    print(
        f"authz benchmark: {args.concurrency} in flight, {args.duration:.0f} s per phase, server model: "
        "one grpc.aio process (asyncio), index in memory"
    )
    try:
        for label, data in (("small", small), ("large", large)):
            name, url = create_database(label)
            databases.append(name)
            t0 = time.monotonic()
            count = load_data(url, data)
            print(
                f"  {label}: {data.workspaces} workspaces, {count} relationships generated in "
                f"{time.monotonic() - t0:.1f} s"
            )
            data.url, data.count = url, count

        noop = Server("noop", base_env)
        noop_uv = Server("noop-uvloop", base_env)
        noop_svc = Server("noop-service", base_env)
        servers += [noop, noop_uv, noop_svc]
        a = Server("authz", {**base_env, "GATEHOUSE_DATABASE_URL": small.url})
        servers.append(a)
        print(
            f"authz on {small.count} relationships: index load {a.load_seconds:.2f} s, RSS {a.rss_mb():.0f} MB"
        )
        payloads = [p.SerializeToString() for p in check_payloads(small, 2000, rng)]
        batches = [
            pb.CheckCapabilitiesRequest(items=check_payloads(small, args.batch, rng)).SerializeToString()
            for _ in range(50)
        ]
        batch_conc = max(1, args.concurrency // 8)
        phases = {
            "noop": ("no-op grpc.aio unary         ", noop, NOOP_METHOD, payloads, args.concurrency),
            "noop_uv": ("no-op grpc.aio on uvloop     ", noop_uv, NOOP_METHOD, payloads, args.concurrency),
            "noop_svc": ("no-op, services' settings    ", noop_svc, NOOP_METHOD, payloads, args.concurrency),
            "check_small": ("CheckCapability (small)      ", a, CHECK, payloads, args.concurrency),
            "kit_noop": ("no-op behind the kit chain   ", a, NOOP_METHOD, payloads, args.concurrency),
            "batch": (f"CheckCapabilities({args.batch}) x{batch_conc}  ", a, BATCH, batches, batch_conc),
        }
        if args.variants:  # measurement variants of the interceptor chain (see bench/authz_server.py)
            for key, label, extra in (
                ("check_asyncio", "CheckCapability, asyncio loop", {"GATEHOUSE_EVENT_LOOP": "asyncio"}),
                ("check_no_telemetry", "CheckCapability, no telemetry ", {"BENCH_TELEMETRY": "0"}),
                ("check_lean_chain", "CheckCapability, lean chain  ", {"BENCH_CHAIN": "lean"}),
                ("check_registered", "CheckCapability, no intercept", {"BENCH_CHAIN": "registered"}),
            ):
                variant = Server("authz", {**base_env, "GATEHOUSE_DATABASE_URL": small.url, **extra})
                servers.append(variant)
                phases[key] = (label, variant, CHECK, payloads, args.concurrency)
            # Server model: two authz processes on one port, against the no-op over as many
            # connections (the kernel balances connections, not calls: 8 spread well enough).
            group = ServerGroup(2, {**base_env, "GATEHOUSE_DATABASE_URL": small.url})
            servers.extend(group.servers)
            phases["noop_8ch"] = (
                "no-op, 8 connections         ",
                noop,
                NOOP_METHOD,
                payloads,
                args.concurrency,
                8,
            )
            phases["check_2proc"] = (
                "CheckCapability, 2 processes ",
                group,
                CHECK,
                payloads,
                args.concurrency,
                8,
            )
        # Interleaved rounds: the machine is shared, so each ratio compares phases run moments apart
        # and the figures below are the medians over the rounds.
        rounds: dict[str, list[dict]] = {name: [] for name in phases}
        for round_no in range(args.rounds):
            for name, (label, server, method, load, conc, *channels) in phases.items():
                r = await drive(
                    server,
                    method,
                    load,
                    md,
                    concurrency=conc,
                    duration=args.duration,
                    channels=(channels or [1])[0],
                )
                rounds[name].append(r)
                print(f"[{round_no + 1}/{args.rounds}] {label} {fmt(r)}")
        for name in phases:
            results[name] = median_run(rounds[name])
        results["ratio_single"] = statistics.median(
            c["rps"] / n["rps"] for c, n in zip(rounds["check_small"], rounds["noop"], strict=True)
        )
        results["ratio_single_uv"] = statistics.median(
            c["rps"] / n["rps"] for c, n in zip(rounds["check_small"], rounds["noop_uv"], strict=True)
        )
        results["ratio_single_svc"] = statistics.median(
            c["rps"] / n["rps"] for c, n in zip(rounds["check_small"], rounds["noop_svc"], strict=True)
        )
        for key in ("check_asyncio", "check_no_telemetry", "check_lean_chain", "check_registered"):
            if key in rounds:
                results[f"ratio_{key}"] = statistics.median(
                    c["rps"] / n["rps"] for c, n in zip(rounds[key], rounds["noop"], strict=True)
                )
        if "check_2proc" in rounds:
            for base in ("noop", "noop_8ch"):
                results[f"ratio_2proc_{base}"] = statistics.median(
                    c["rps"] / n["rps"] for c, n in zip(rounds["check_2proc"], rounds[base], strict=True)
                )
        results["ratio_batch"] = statistics.median(
            b_["rps"] * args.batch / c["rps"]
            for b_, c in zip(rounds["batch"], rounds["check_small"], strict=True)
        )
        noop.stop()
        noop_uv.stop()
        noop_svc.stop()

        b = Server("authz", {**base_env, "GATEHOUSE_DATABASE_URL": small.url})
        servers.append(b)
        lags = sorted(await visibility(a, b, md, args.probes))
        results["visibility"] = {
            "p50_ms": lags[len(lags) // 2] * 1e3,
            "p99_ms": lags[int(len(lags) * 0.99)] * 1e3,
        }
        print(
            f"cross-replica visibility ({len(lags)} writes): p50 {results['visibility']['p50_ms']:.1f} ms, "
            f"p99 {results['visibility']['p99_ms']:.1f} ms"
        )
        b.stop()

        big = Server("authz", {**base_env, "GATEHOUSE_DATABASE_URL": large.url}, timeout=600)
        servers.append(big)
        results["large_load"] = {
            "load_s": big.load_seconds,
            "start_s": big.start_seconds,
            "rss_mb": big.rss_mb(),
        }
        print(
            f"authz on {large.count} relationships: index load {big.load_seconds:.2f} s "
            f"(process ready in {big.start_seconds:.1f} s), RSS {big.rss_mb():.0f} MB"
        )
        large_payloads = [p.SerializeToString() for p in check_payloads(large, 2000, rng)]
        pairs = []
        for round_no in range(args.rounds):  # small and large interleaved, as above
            small_run = await drive(
                a, CHECK, payloads, md, concurrency=args.concurrency, duration=args.duration
            )
            large_run = await drive(
                big, CHECK, large_payloads, md, concurrency=args.concurrency, duration=args.duration
            )
            pairs.append((small_run, large_run))
            print(f"[{round_no + 1}/{args.rounds}] CheckCapability (small)       {fmt(small_run)}")
            print(f"[{round_no + 1}/{args.rounds}] CheckCapability (large)       {fmt(large_run)}")
        a.stop()
        results["check_large"] = median_run([lr for _, lr in pairs])
        results["ratio_p99"] = statistics.median(lr["p99_ms"] / sr["p99_ms"] for sr, lr in pairs)
        results["ratio_cpu_large"] = statistics.median(lr["cpu_us"] / sr["cpu_us"] for sr, lr in pairs)
        lookup = pb.LookupResourcesRequest(
            subject=refs_pb2.SubjectRef(type="user", id="lookup"),
            resource_type="workspace",
            capability="chat",
            page_size=1000,
        ).SerializeToString()
        results["lookup"] = await drive(
            big, LOOKUP, [lookup], md, concurrency=1, duration=min(args.duration, 3)
        )
        print(
            f"LookupResources ({len(large.lookup_workspaces)} of {large.workspaces}, 1 in flight) {fmt(results['lookup'])}"
        )
        big.stop()
        results["lookup_index"] = index_lookup_times(large, rounds=200)
        print(
            f"LookupResources in the index itself (the server-side work, in this process): "
            f"p50 {results['lookup_index']['p50_ms']:.2f} ms, p99 {results['lookup_index']['p99_ms']:.2f} ms "
            f"(CPU time p99 {results['lookup_index']['cpu_p99_ms']:.2f} ms)"
        )
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        for name in databases:
            drop_database(name)

    r = results
    print("\nserver CPU per call: where it goes")
    print(
        f"  grpc.aio unary RPC (no-op server)      {r['noop']['cpu_us']:5.0f} µs   (on uvloop {r['noop_uv']['cpu_us']:.0f} µs, "
        f"with the services' grpc settings too {r['noop_svc']['cpu_us']:.0f} µs)"
    )
    print(
        f"  + kit (telemetry, request id, token)   {r['kit_noop']['cpu_us'] - r['noop_svc']['cpu_us']:5.0f} µs   "
        "(over the no-op as the services run it)"
    )
    print(
        f"  + CheckCapability itself               {r['check_small']['cpu_us'] - r['kit_noop']['cpu_us']:5.0f} µs"
    )
    print("\nratios against the targets")
    print(
        f"  single check / no-op throughput        {r['ratio_single']:.2f}x   (target >= 0.8x; median of {args.rounds} rounds)"
    )
    print(
        f"  single check / no-op on uvloop         {r['ratio_single_uv']:.2f}x   (the same loop on both sides)"
    )
    print(
        f"  single check / no-op as services run   {r['ratio_single_svc']:.2f}x   "
        "(the same loop and grpc settings: the kit and the check alone)"
    )
    for key, label in (
        ("check_asyncio", "on the asyncio loop"),
        ("check_no_telemetry", "without telemetry"),
        ("check_lean_chain", "one lean interceptor"),
        ("check_registered", "no interceptor, minimal"),
    ):
        if f"ratio_{key}" in r:
            print(f"    variant {label:22s}     {r[f'ratio_{key}']:.2f}x")
    if "ratio_2proc_noop" in r:
        print(
            f"    variant 2 processes, 8 conns     {r['ratio_2proc_noop']:.2f}x   "
            f"(vs the no-op over 8 connections: {r['ratio_2proc_noop_8ch']:.2f}x; twice the index memory)"
        )
    print(f"  batch({args.batch}) checks/s / single checks/s  {r['ratio_batch']:.1f}x   (target >= 30x)")
    print(
        f"  check p99 large / small                {r['ratio_p99']:.2f}x   "
        f"(target <= 1.25x; {large.count} vs {small.count} relationships)"
    )
    print(
        f"  server CPU per check large / small     {r['ratio_cpu_large']:.2f}x   (less sensitive to a busy machine)"
    )
    print(
        f"  server CPU per check / per no-op call  {r['check_small']['cpu_us'] / r['noop']['cpu_us']:.2f}x   "
        f"(no-op on uvloop: {r['check_small']['cpu_us'] / r['noop_uv']['cpu_us']:.2f}x)"
    )
    print(
        f"  index load                             {r['large_load']['load_s']:.1f} s   (target <= 30 s at 1M)"
    )
    print(
        f"  resident memory                        {r['large_load']['rss_mb']:.0f} MB   (target <= 400 MB at 1M)"
    )
    print(
        f"  LookupResources p99                    {r['lookup_index']['p99_ms']:.2f} ms in the index "
        f"(CPU {r['lookup_index']['cpu_p99_ms']:.2f} ms), "
        f"{r['lookup']['p99_ms']:.2f} ms client-side   (target <= 5 ms server-side)"
    )
    print(f"  cross-replica visibility p99           {r['visibility']['p99_ms']:.1f} ms   (target <= 250 ms)")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--full", action="store_true", help="large case of 100,000 workspaces (~1.2M relationships)"
    )
    p.add_argument("--small", type=int, default=100, help="workspaces of the small case (10 bindings each)")
    p.add_argument("--large", type=int, default=10_000, help="workspaces of the large case (default 10,000)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load phase")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput phases")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    p.add_argument("--batch", type=int, default=100, help="items per CheckCapabilities call")
    p.add_argument("--probes", type=int, default=100, help="writes measured for cross-replica visibility")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--variants",
        action="store_true",
        help="also measure authz on the asyncio loop, without the telemetry interceptor, with one lean "
        "interceptor, with handlers wrapped at registration (no interceptor), and as two processes "
        "sharing one port (against the no-op over the same 8 connections)",
    )
    args = p.parse_args(argv)
    if args.full:
        args.large = 100_000
    return args


if __name__ == "__main__":
    arguments = parse_args()
    figures = asyncio.run(main(arguments))
    if arguments.json:
        pathlib.Path(arguments.json).write_text(json.dumps(figures, indent=2))
