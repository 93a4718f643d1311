"""Gateway overhead: ``GET /api/v1/workspaces/{id}/access`` through the HTTP gateway versus
the same ``WorkspaceService/GetWorkspaceAccess`` gRPC call made directly to tenancy.

    .venv/bin/python bench/bench_gateway.py                  # 2,000 sequential + 4,000 concurrent per path
    .venv/bin/python bench/bench_gateway.py --requests 500   # quicker

The whole stack runs as processes (``gatehouse-run`` on SQLite, as ``make run``
starts it); the bootstrapped platform admin signs in, creates a workspace, and
then one client process measures, in the same run:

- latency: sequential calls, alternating blocks of 100 between the two paths
  (so drift on a shared machine hits both alike) — p50, p99, mean;
- throughput: ``--concurrency`` calls in flight on one connection pool/channel.

for (1) the issue's pair, ``GET /api/v1/workspaces/{id}/access`` vs tenancy's
``GetWorkspaceAccess``, and (2) ``POST /api/v1/authz:access`` vs authz
``GetAccess``, which authz answers from memory, so the gateway's own cost shows
against a sub-millisecond baseline.

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

from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc
from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from gatehouse.tenancy.v1 import (
    organization_service_pb2,
    organization_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from gatehouse.testing.stack import start_stack
from gatehouse.type.v1 import refs_pb2

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


def setup(stack) -> tuple[str, str, str]:
    """Sign in as the bootstrapped admin and create a workspace; returns (token, user id, workspace id)."""
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
    return login.access_token, login.user.id, ws.id


async def compare(title: str, direct, gateway, args) -> None:
    """Latency (sequential, alternating blocks) and throughput of two callables, printed side by side."""
    print(title)
    for call in (direct, gateway):  # warm up both paths
        for _ in range(50):
            await call()
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    deadline = time.monotonic() + args.max_seconds
    while min(len(s) for s in samples.values()) < args.requests and time.monotonic() < deadline:
        for name, call in (("direct", direct), ("gateway", gateway)):
            for _ in range(BLOCK):
                started = time.perf_counter()
                await call()
                samples[name].append(time.perf_counter() - started)
    print(f" latency, sequential (one call in flight), alternating blocks of {BLOCK}:")
    for name in ("direct", "gateway"):
        print(_row(name, samples[name]))
    d99, g99 = _pct(samples["direct"], 0.99), _pct(samples["gateway"], 0.99)
    d50, g50 = _pct(samples["direct"], 0.5), _pct(samples["gateway"], 0.5)
    print(
        f"  gateway/direct: p50 {g50 / d50:.2f}x (+{(g50 - d50) * 1000:.2f} ms), "
        f"p99 {g99 / d99:.2f}x (target p99 <= 2.00x)"
    )
    print(f" throughput, {args.concurrency} calls in flight, {args.requests * 2} calls per path:")
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
        rates[name] = len(latencies) / (time.perf_counter() - started)
        print(_row(name, latencies) + f"  {rates[name]:8.0f} req/s")
    print(f"  gateway/direct throughput: {rates['gateway'] / rates['direct']:.2f}x")


async def measure(stack, token: str, user_id: str, workspace_id: str, args) -> None:
    md = (("authorization", f"Bearer {token}"),)
    base = f"http://{stack.addresses['gateway']}"
    headers = {"Authorization": f"Bearer {token}"}
    tenancy = grpc.aio.insecure_channel(stack.addresses["tenancy"])
    authz = grpc.aio.insecure_channel(stack.addresses["authz"])
    workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(tenancy)
    access_stub = authz_service_pb2_grpc.AuthzServiceStub(authz)
    ws_request = workspace_service_pb2.GetWorkspaceAccessRequest(workspace_id=workspace_id)
    subject = {"type": "user", "id": user_id}
    resource = {"type": "workspace", "id": workspace_id}
    authz_request = authz_service_pb2.GetAccessRequest(
        subject=refs_pb2.SubjectRef(**subject), resource=refs_pb2.ResourceRef(**resource)
    )
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def direct_workspace() -> None:
            answer = await workspaces.GetWorkspaceAccess(ws_request, metadata=md, timeout=10)
            assert answer.member_role == "owner"

        async def gateway_workspace() -> None:
            async with http.get(f"{base}/api/v1/workspaces/{workspace_id}/access", headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["memberRole"] == "owner", body

        async def direct_authz() -> None:
            answer = await access_stub.GetAccess(authz_request, metadata=md, timeout=10)
            assert answer.member_role == "owner"

        async def gateway_authz() -> None:
            async with http.post(
                f"{base}/api/v1/authz:access",
                json={"subject": subject, "resource": resource},
                headers=headers,
            ) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["memberRole"] == "owner", body

        await compare(
            "1. GET /api/v1/workspaces/{id}/access vs WorkspaceService/GetWorkspaceAccess on tenancy",
            direct_workspace,
            gateway_workspace,
            args,
        )
        await compare(
            "2. POST /api/v1/authz:access vs AuthzService/GetAccess (authz answers from memory: "
            "isolates the gateway's own cost)",
            direct_authz,
            gateway_authz,
            args,
        )
    await tenancy.close()
    await authz.close()


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
            token, user_id, workspace_id = setup(stack)
            print(f"stack up (SQLite, log level {args.log_level}); workspace {workspace_id}")
            asyncio.run(measure(stack, token, user_id, workspace_id, args))
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
