"""In-process cost of authz's CheckCapability handler (no gRPC, no network).

``python bench/profile_authz_check.py [--workspaces N] [--calls N] [--profile] [--instructions]``

Loads a real Index with the generated relationships of ``bench_authz.py`` (same seed), calls
``AuthzServicer.CheckCapability`` directly with the same request mix as the benchmark, as a
service account and as a user checking itself (a real Principal in the context variable), and
prints the median µs per call over a few bounded rounds (and per item of CheckCapabilities
with 100 items, the answer serialized); ``--profile`` adds a cProfile listing.

``--instructions`` counts CPU instructions per check instead, with valgrind's callgrind (Debian
package ``valgrind``): each workload runs twice, over 500 and over 2,500 checks, and the
difference divided by 2,000 leaves start-up out. Slow (about three minutes) but the same on every run,
where the timings above move by ±30 % on a shared machine: the figure to compare two versions of
the hot path by.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pathlib
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_authz import Dataset, check_payloads  # noqa: E402

from gatehouse.authz.v1 import authz_service_pb2 as pb  # noqa: E402
from gatehouse.kit.context import Principal, principal_var  # noqa: E402
from gatehouse_authz.api.servicer import AuthzServicer  # noqa: E402
from gatehouse_authz.domain.catalog import load_catalog  # noqa: E402
from gatehouse_authz.domain.index import Index  # noqa: E402


def load_index(data: Dataset) -> Index:
    rels, states, _ = data.rows()
    index = Index(load_catalog())
    index.load_rows(
        (tuple(line.split("\t")[:6]) for line in rels.splitlines()),
        (tuple(line.split("\t")[:3]) for line in states.splitlines()),
    )
    index.revision = 1
    return index


def answer(coro):
    """Run a handler that never waits (no consistency asked) to its end, without an event loop;
    its return value."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the handler waited: these requests should not")


def run(servicer: AuthzServicer, requests: list, rounds: int) -> float:
    """Median ns per call of ``CheckCapability`` over ``rounds`` passes of ``requests``."""
    method = servicer.CheckCapability
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for request in requests:
            answer(method(request, None))
        per_call.append((time.perf_counter_ns() - t0) / len(requests))
    return statistics.median(per_call)


COUNTED = (5, 25)  # batches of 100 checks in the two runs whose difference is counted
WORKLOADS = {
    "index": "Index.check alone",
    "servicer": "CheckCapability (servicer)",
    "batch": "CheckCapabilities(100), per item (request parsed, answer serialized)",
}


def count_workload(workload: str, batches: int) -> None:
    """The work callgrind measures: ``batches`` times 100 checks of ``workload`` (after a warm-up)."""
    data = Dataset(100)
    index = load_index(data)
    servicer = AuthzServicer(index, store=None, follower=None)
    # The same set-up whatever ``batches`` is: only the counted loop may differ between two runs.
    requests = [
        pb.CheckCapabilityRequest.FromString(r.SerializeToString())
        for r in check_payloads(data, 100 * (COUNTED[-1] + 3), random.Random(7))
    ]
    principal_var.set(Principal(kind="service", id="bench"))
    encoded = [
        pb.CheckCapabilitiesRequest(items=requests[i : i + 100]).SerializeToString()
        for i in range(0, len(requests), 100)
    ]

    def run_batch(k: int) -> None:
        items = requests[k * 100 : (k + 1) * 100]
        if workload == "index":
            for r in items:
                index.check(
                    (r.subject.type, r.subject.id), (r.resource.type, r.resource.id), r.capability, ()
                )
            return
        if workload == "servicer":
            for r in items:
                answer(servicer.CheckCapability(r, None))
            return
        request = pb.CheckCapabilitiesRequest.FromString(encoded[k])
        answer(servicer.CheckCapabilities(request, None)).SerializeToString()

    for k in range(batches + 3):  # three warm-up batches
        run_batch(k)


def count_instructions() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")

    def collected(workload: str, batches: int) -> int:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
            + ["--count", workload, str(batches)],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        return int(re.search(r"Collected : (\d+)", out).group(1))

    for workload, label in WORKLOADS.items():
        few, many = COUNTED
        per_item = (collected(workload, many) - collected(workload, few)) / ((many - few) * 100)
        print(f"{label}: {per_item:,.0f} instructions per check", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--count"]:  # the workload run under callgrind by --instructions
        count_workload(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspaces", type=int, default=100)
    p.add_argument("--calls", type=int, default=20_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print a cProfile listing of one round")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per check with valgrind (stable across runs) instead of timing",
    )
    args = p.parse_args()
    if args.instructions:
        count_instructions()
        return

    data = Dataset(args.workspaces)
    index = load_index(data)
    gc.collect()
    gc.freeze()
    servicer = AuthzServicer(index, store=None, follower=None)
    payloads = check_payloads(data, args.calls, random.Random(7))
    requests = [pb.CheckCapabilityRequest.FromString(r.SerializeToString()) for r in payloads]
    own = [r for r in requests if r.subject.type == "user"]

    service = Principal(kind="service", id="bench")
    principal_var.set(service)
    print(f"service account caller: {run(servicer, requests, args.rounds) / 1e3:.2f} µs per check")
    # A user asking about itself (the rule answered without platform-admin lookups).
    per_user = []
    for _ in range(args.rounds):
        t0 = time.perf_counter_ns()
        for r in own[: args.calls // 4]:
            principal_var.set(Principal(kind="user", id=r.subject.id))
            answer(servicer.CheckCapability(r, None))
        per_user.append((time.perf_counter_ns() - t0) / len(own[: args.calls // 4]))
    print(f"user checking itself:   {statistics.median(per_user) / 1e3:.2f} µs per check (incl. context set)")
    principal_var.set(service)
    t0 = time.perf_counter_ns()
    for r in requests:
        index.check((r.subject.type, r.subject.id), (r.resource.type, r.resource.id), r.capability, ())
    print(f"Index.check alone:      {(time.perf_counter_ns() - t0) / len(requests) / 1e3:.2f} µs per check")
    batches = [
        pb.CheckCapabilitiesRequest(items=requests[i : i + 100]) for i in range(0, len(requests) - 99, 100)
    ]
    per_item = []
    for _ in range(args.rounds):
        t0 = time.perf_counter_ns()
        for batch in batches:
            answer(servicer.CheckCapabilities(batch, None)).SerializeToString()  # as grpc does
        per_item.append((time.perf_counter_ns() - t0) / (100 * len(batches)))
    print(f"CheckCapabilities(100): {statistics.median(per_item) / 1e3:.2f} µs per item (answer serialized)")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, servicer, requests, 1)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    asyncio.run(asyncio.sleep(0))  # nothing left pending


if __name__ == "__main__":
    main()
