"""In-process cost of authz's CheckCapability handler (no gRPC, no network).

``python bench/profile_authz_check.py [--workspaces N] [--calls N] [--profile]``

Loads a real Index with the generated relationships of ``bench_authz.py`` (same seed), calls
``AuthzServicer.CheckCapability`` directly with the same request mix as the benchmark, as a
service account and as a user checking itself (a real Principal in the context variable), and
prints the median µs per call over a few bounded rounds (and per item of CheckCapabilities
with 100 items, the answer serialized); ``--profile`` adds a cProfile listing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pathlib
import pstats
import random
import statistics
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


def run(servicer: AuthzServicer, requests: list, rounds: int) -> float:
    """Median ns per call of ``CheckCapability`` over ``rounds`` passes of ``requests``."""
    method = servicer.CheckCapability
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for request in requests:
            coro = method(request, None)
            try:
                coro.send(None)
            except StopIteration:
                pass
        per_call.append((time.perf_counter_ns() - t0) / len(requests))
    return statistics.median(per_call)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspaces", type=int, default=100)
    p.add_argument("--calls", type=int, default=20_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print a cProfile listing of one round")
    args = p.parse_args()

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
            coro = servicer.CheckCapability(r, None)
            try:
                coro.send(None)
            except StopIteration:
                pass
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
            coro = servicer.CheckCapabilities(batch, None)
            try:
                coro.send(None)
            except StopIteration as done:
                done.value.SerializeToString()  # as grpc does with the answer
        per_item.append((time.perf_counter_ns() - t0) / (100 * len(batches)))
    print(f"CheckCapabilities(100): {statistics.median(per_item) / 1e3:.2f} µs per item (answer serialized)")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, servicer, requests, 1)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    asyncio.run(asyncio.sleep(0))  # nothing left pending


if __name__ == "__main__":
    main()
