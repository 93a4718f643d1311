"""Gateway overhead: ``GET /api/v1/workspaces/{id}/access`` through the HTTP gateway versus
the same ``WorkspaceService/GetWorkspaceAccess`` gRPC call made directly to tenancy.

    .venv/bin/python bench/bench_gateway.py                  # 2,000 sequential + 4,000 concurrent per path
    .venv/bin/python bench/bench_gateway.py --requests 500   # quicker

The whole stack runs as processes (``gatehouse-run`` on SQLite, as ``make run``
starts it); the bootstrapped platform admin signs in, creates a workspace, and
then one client process measures, in the same run:

1. latency: sequential calls, alternating blocks of 100 between the two paths
   (so drift on a shared machine hits both alike) — p50, p99, mean;
2. throughput: ``--concurrency`` calls in flight on one connection/channel.

The HTTP client is aiohttp (keep-alive), the gRPC client grpc.aio; both decode the
answer (JSON / protobuf). Every phase is bounded by the request count and by
``--max-seconds``. Figures go to docs/gateway.md; the target is gateway p99 <= 2x
direct p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc

from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from gatehouse.tenancy.v1 import (
    organization_service_pb2,
    organization_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from gatehouse.testing.stack import start_stack

PASSWORD = "Copper-Falcon-Meadow-2026"
BOOTSTRAP = {
    "GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL": "bench@example.com",
    "GATEHOUSE_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
    "GATEHOUSE_BOOTSTRAP_ORG_NAME": "Bench Inc",
    "GATEHOUSE_BOOTSTRAP_ORG_SLUG": "bench-inc",
}
BLOCK = 100


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"  {name:<8} n={len(ms):>5}  p50={_pct(ms, 0.50):6.2f} ms  p99={_pct(ms, 0.99):6.2f} ms  "
        f"mean={statistics.fmean(ms):6.2f} ms"
    )


def setup(stack) -> tuple[str, str]:
    """Sign in as the bootstrapped admin and create a workspace; returns (token, workspace id)."""
    with (
        grpc.insecure_channel(stack.addresses["identity"]) as ich,
        grpc.insecure_channel(stack.addresses["tenancy"]) as tch,
    ):
        login = identity_service_pb2_grpc.IdentityServiceStub(ich).Login(
            identity_service_pb2.LoginRequest(
                email=BOOTSTRAP["GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL"], password=PASSWORD
            ),
            timeout=15,
        )
        md = [("authorization", f"Bearer {login.access_token}")]
        org = (
            organization_service_pb2_grpc.OrganizationServiceStub(tch)
            .GetOrganizationBySlug(
                organization_service_pb2.GetOrganizationBySlugRequest(slug="bench-inc"), timeout=5
            )
            .organization
        )
        ws = (
            workspace_service_pb2_grpc.WorkspaceServiceStub(tch)
            .CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(organization_id=org.id, name="Bench"),
                metadata=md,
                timeout=10,
            )
            .workspace
        )
    return login.access_token, ws.id


async def measure(stack, token: str, workspace_id: str, args) -> None:
    md = (("authorization", f"Bearer {token}"),)
    url = f"http://{stack.addresses['gateway']}/api/v1/workspaces/{workspace_id}/access"
    headers = {"Authorization": f"Bearer {token}"}
    request = workspace_service_pb2.GetWorkspaceAccessRequest(workspace_id=workspace_id)
    channel = grpc.aio.insecure_channel(stack.addresses["tenancy"])
    stub = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def direct() -> None:
            answer = await stub.GetWorkspaceAccess(request, metadata=md, timeout=10)
            assert answer.member_role == "owner"

        async def gateway() -> None:
            async with http.get(url, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["memberRole"] == "owner", body

        for call in (direct, gateway):  # warm up both paths
            for _ in range(50):
                await call()

        # 1. latency, sequential, alternating blocks
        samples: dict[str, list[float]] = {"direct": [], "gateway": []}
        deadline = time.monotonic() + args.max_seconds
        while min(len(s) for s in samples.values()) < args.requests and time.monotonic() < deadline:
            for name, call in (("direct", direct), ("gateway", gateway)):
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    await call()
                    samples[name].append(time.perf_counter() - started)
        print(f"latency, sequential (one call in flight), alternating blocks of {BLOCK}:")
        for name in ("direct", "gateway"):
            print(_row(name, samples[name]))
        d99, g99 = _pct(samples["direct"], 0.99), _pct(samples["gateway"], 0.99)
        d50, g50 = _pct(samples["direct"], 0.5), _pct(samples["gateway"], 0.5)
        print(f"  gateway/direct: p50 {g50 / d50:.2f}x, p99 {g99 / d99:.2f}x (target p99 <= 2.00x)")

        # 2. throughput with calls in flight
        print(f"throughput, {args.concurrency} calls in flight, {args.requests * 2} calls per path:")
        rates = {}
        for name, call in (("direct", direct), ("gateway", gateway)):
            remaining = args.requests * 2
            deadline = time.monotonic() + args.max_seconds
            latencies: list[float] = []

            async def worker(call=call, deadline=deadline, latencies=latencies) -> None:
                nonlocal remaining
                while remaining > 0 and time.monotonic() < deadline:
                    remaining -= 1
                    started = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - started
            rates[name] = len(latencies) / elapsed
            print(_row(name, latencies) + f"  {rates[name]:8.0f} req/s")
        print(f"  gateway/direct throughput: {rates['gateway'] / rates['direct']:.2f}x")
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential calls per path (default 2000)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="calls in flight for throughput (default 16)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="upper bound per phase (default 120)"
    )
    parser.add_argument("--log-level", default="INFO", help="GATEHOUSE_LOG_LEVEL of the stack (default INFO)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-gateway-") as tmp:
        stack = start_stack(
            Path(tmp) / "data", extra_env={**BOOTSTRAP, "GATEHOUSE_LOG_LEVEL": args.log_level}
        )
        try:
            token, workspace_id = setup(stack)
            print(f"stack up (SQLite, log level {args.log_level}); workspace {workspace_id}")
            asyncio.run(measure(stack, token, workspace_id, args))
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
