"""Tenancy benchmark: what a tenancy call costs on top of the authz call it cannot do without.

    .venv/bin/python bench/bench_tenancy.py                     # SQLite, 100 samples per figure
    .venv/bin/python bench/bench_tenancy.py --postgres          # a fresh database on 127.0.0.1:5432, dropped after

Real identity, authz and tenancy servers in one process (gRPC over loopback).
Figures (median and p95 in ms, and the ratio to a baseline measured in the same run):

1. CreateWorkspace — validation, authz check, one transaction (rows + authz outbox
   + audit event), synchronous delivery to authz. Baseline: the bare authz
   WriteRelationships of the same two relationships.
2. AddWorkspaceMember — the same shape for a role binding.
3. GetWorkspace — one authz check plus a row read. Baseline: the bare authz
   CheckCapability.
4. ListWorkspaces (page of 50 out of all workspaces of the organization) —
   authz LookupResources plus one read. Baseline: the bare LookupResources.

Bounded: ``--samples`` per figure and ``--max-seconds`` per phase. Figures go to docs/tenancy.md.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time
import uuid

import grpc

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc, relationship_pb2
from gatehouse.kit.app import build_server
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import organization_service_pb2_grpc, workspace_service_pb2_grpc
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity
from gatehouse.type.v1 import refs_pb2
from gatehouse_tenancy.server import build

Op = relationship_pb2.RelationshipUpdate.Operation


def ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


async def timed(n: int, max_seconds: float, make_call) -> list[float]:
    out: list[float] = []
    deadline = time.monotonic() + max_seconds
    for i in range(n):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        await make_call(i)
        out.append(time.perf_counter() - started)
    return out


def report(name: str, samples: list[float], baseline: list[float] | None = None, label: str = "") -> None:
    med, p95 = ms(samples)
    line = f"{name:<42} n={len(samples):<4} median {med:7.2f} ms  p95 {p95:7.2f} ms"
    if baseline:
        bmed, bp95 = ms(baseline)
        line += f"   | {label}: median {bmed:6.2f} ms  p95 {bp95:6.2f} ms  ratio {med / bmed:4.1f}x"
    print(line, flush=True)


def rel(resource: str, relation: str, subject: str) -> relationship_pb2.RelationshipUpdate:
    rt, ri = resource.split(":")
    st, si = subject.split(":")
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_TOUCH,
        relationship=relationship_pb2.Relationship(
            resource=refs_pb2.ResourceRef(type=rt, id=ri),
            relation=relation,
            subject=refs_pb2.SubjectRef(type=st, id=si),
        ),
    )


async def main(args) -> int:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-tenancy-"))
    url = f"sqlite+aiosqlite:///{tmp / 'tenancy.db'}"
    if args.postgres:
        from gatehouse.testing.db import create_pg_database, drop_pg_database

        name, url = create_pg_database()
        try:
            return await run(args, tmp, url)
        finally:
            drop_pg_database(name)
    return await run(args, tmp, url)


async def run(args, tmp: pathlib.Path, url: str) -> int:
    print(f"tenancy database: {url.split('://')[0]}; samples {args.samples}", flush=True)
    async with running_identity(tmp, with_authz=True) as identity:
        settings = await identity.peer_settings(tmp / "tenancy", "tenancy", database_url=url)
        server = build_server(settings, build)
        port = await server.start()
        await server.wait_started()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        authz_channel = grpc.aio.insecure_channel(identity.authz_address)
        try:
            orgs = organization_service_pb2_grpc.OrganizationServiceStub(channel)
            ws = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
            authz = authz_service_pb2_grpc.AuthzServiceStub(authz_channel)
            svc = await identity.service_metadata("tenancy")
            admin_id, admin_token = await identity.user_token()
            await identity.make_platform_admin(admin_id)
            owner_email = f"owner-{uuid.uuid4().hex[:6]}@example.com"
            owner_id = await identity.create_user(owner_email)
            owner_md = [("authorization", f"Bearer {await identity.login(owner_email)}")]
            org = (
                await orgs.CreateOrganization(
                    opb.CreateOrganizationRequest(name="Bench", slug="bench-org", owner_user_id=owner_id),
                    metadata=[("authorization", f"Bearer {admin_token}")],
                )
            ).organization
            member_ids = []
            for i in range(args.samples):
                answer = await orgs.CreateOrganizationMember(
                    opb.CreateOrganizationMemberRequest(
                        organization_id=org.id,
                        email=f"m{i}-{uuid.uuid4().hex[:6]}@example.com",
                        initial_password=DEFAULT_PASSWORD,
                        role=r.ORG_ROLE_MEMBER,
                    ),
                    metadata=owner_md,
                )
                member_ids.append(answer.member.user_id)

            created: list[str] = []

            async def create(i):
                answer = await ws.CreateWorkspace(
                    wpb.CreateWorkspaceRequest(organization_id=org.id, name=f"ws {i}"), metadata=owner_md
                )
                created.append(answer.workspace.id)

            async def write_baseline(i):
                w = f"workspace:bench-{i}"
                await authz.WriteRelationships(
                    apb.WriteRelationshipsRequest(
                        updates=[
                            rel(w, "parent", f"organization:{org.id}"),
                            rel(w, "owner", f"user:{owner_id}"),
                        ]
                    ),
                    metadata=svc,
                )

            t_create = await timed(args.samples, args.max_seconds, create)
            t_write = await timed(args.samples, args.max_seconds, write_baseline)
            report("CreateWorkspace", t_create, t_write, "authz WriteRelationships")

            target = created[0]

            async def add(i):
                await ws.AddWorkspaceMember(
                    wpb.AddWorkspaceMemberRequest(
                        workspace_id=target, principal=refs_pb2.SubjectRef(type="user", id=member_ids[i])
                    ),
                    metadata=owner_md,
                )

            t_add = await timed(min(args.samples, len(member_ids)), args.max_seconds, add)
            report("AddWorkspaceMember", t_add, t_write, "authz WriteRelationships")

            async def get(i):
                await ws.GetWorkspace(
                    wpb.GetWorkspaceRequest(workspace_id=created[i % len(created)]), metadata=owner_md
                )

            async def check(i):
                await authz.CheckCapability(
                    apb.CheckCapabilityRequest(
                        subject=refs_pb2.SubjectRef(type="user", id=owner_id),
                        resource=refs_pb2.ResourceRef(type="workspace", id=created[i % len(created)]),
                        capability="chat",
                    ),
                    metadata=svc,
                )

            t_get = await timed(args.samples, args.max_seconds, get)
            t_check = await timed(args.samples, args.max_seconds, check)
            report("GetWorkspace", t_get, t_check, "authz CheckCapability")

            async def list_page(i):
                await ws.ListWorkspaces(
                    wpb.ListWorkspacesRequest(organization_id=org.id, page_size=50), metadata=owner_md
                )

            async def lookup(i):
                await authz.LookupResources(
                    apb.LookupResourcesRequest(
                        subject=refs_pb2.SubjectRef(type="user", id=owner_id),
                        resource_type="workspace",
                        capability="chat",
                        parent=refs_pb2.ResourceRef(type="organization", id=org.id),
                    ),
                    metadata=svc,
                )

            t_list = await timed(args.samples, args.max_seconds, list_page)
            t_lookup = await timed(args.samples, args.max_seconds, lookup)
            report(f"ListWorkspaces (50 of {len(created)})", t_list, t_lookup, "authz LookupResources")
        finally:
            await channel.close()
            await authz_channel.close()
            await server.stop(0)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--postgres", action="store_true", help="tenancy on a fresh PostgreSQL database")
    sys.exit(asyncio.run(main(parser.parse_args())))
