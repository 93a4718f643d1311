"""Service accounts: provisioning into the data dir, token issue and use, admin RPCs, deletion revokes."""

from __future__ import annotations

import json
import os
import stat

import grpc

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.service_auth import PROVISIONED_SERVICES, credentials_path, load_credentials
from gatehouse.testing.identity import running_identity
from services.identity.tests.helpers import admin_token, all_pages, eventually, fails, md

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def test_provisioned_credentials_issue_service_tokens(identity):
    for name in PROVISIONED_SERVICES:
        path = credentials_path(identity.data_dir, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    creds = load_credentials(identity.data_dir, "tenancy", environ={})
    issued = await identity.stub.IssueServiceToken(
        pb.IssueServiceTokenRequest(client_id=creds.client_id, client_secret=creds.client_secret)
    )
    principal = await identity.identity.spec.verifier(issued.access_token)
    assert principal.kind == "service" and principal.claims["pt"] == "service"
    assert principal.service_name == "tenancy"  # signed in: what audit accepts its events as
    user_id = await identity.create_user()
    batch = await identity.stub.BatchGetUsers(
        pb.BatchGetUsersRequest(user_ids=[user_id]), metadata=md(issued.access_token)
    )
    assert [u.id for u in batch.users] == [user_id]
    for client_id, secret in ((creds.client_id, "wrong"), ("unknown", creds.client_secret), ("", "")):
        await fails(
            identity.stub.IssueServiceToken(
                pb.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
            ),
            UNAUTH,
            "INVALID_CREDENTIALS",
        )


async def test_restart_keeps_matching_credentials_and_repairs_stale_ones(tmp_path):
    async with running_identity(tmp_path) as identity:
        tenancy = credentials_path(identity.data_dir, "tenancy").read_text()
        audit = credentials_path(identity.data_dir, "audit")
        audit.write_text(json.dumps({"client_id": "stale", "client_secret": "stale"}))
    async with running_identity(tmp_path) as identity:
        assert credentials_path(identity.data_dir, "tenancy").read_text() == tenancy
        assert json.loads(audit.read_text())["client_id"] != "stale"
        assert await identity.service_token("audit")
        assert await identity.service_token("tenancy")


async def test_service_account_admin_rpcs_and_deletion_revokes_tokens(identity_authz):
    identity = identity_authz
    _, admin = await admin_token(identity)
    _, nobody = await identity.user_token()
    await fails(
        identity.stub.CreateServiceAccount(pb.CreateServiceAccountRequest(name="robot"), metadata=md(nobody)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        identity.stub.CreateServiceAccount(
            pb.CreateServiceAccountRequest(name="Bad Name"), metadata=md(admin)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    created = await identity.stub.CreateServiceAccount(
        pb.CreateServiceAccountRequest(name="robot", request_id="x1"), metadata=md(admin)
    )
    retried = await identity.stub.CreateServiceAccount(
        pb.CreateServiceAccountRequest(name="robot", request_id="x1"), metadata=md(admin)
    )
    assert (retried.service_account.id, retried.client_secret) == (
        created.service_account.id,
        created.client_secret,
    )
    await fails(
        identity.stub.CreateServiceAccount(pb.CreateServiceAccountRequest(name="robot"), metadata=md(admin)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    accounts = await all_pages(
        identity.stub.ListServiceAccounts,
        lambda t: pb.ListServiceAccountsRequest(page_size=2, page_token=t),
        "service_accounts",
        md(admin),
    )
    assert [a.id for a in accounts] == sorted(a.id for a in accounts)  # keyset order by id
    assert sorted(a.name for a in accounts) == sorted([*PROVISIONED_SERVICES, "robot"])
    robot = await identity.stub.IssueServiceToken(
        pb.IssueServiceTokenRequest(
            client_id=created.service_account.client_id, client_secret=created.client_secret
        )
    )
    svc = md(robot.access_token)
    assert await identity.stub.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=[]), metadata=svc) is not None
    await identity.stub.DeleteServiceAccount(
        pb.DeleteServiceAccountRequest(service_account_id=created.service_account.id), metadata=md(admin)
    )

    async def refused():
        try:
            await identity.stub.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=[]), metadata=svc)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == UNAUTH
        return False

    await eventually(refused)
    await fails(
        identity.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(
                client_id=created.service_account.client_id, client_secret=created.client_secret
            )
        ),
        UNAUTH,
    )
    await fails(
        identity.stub.DeleteServiceAccount(
            pb.DeleteServiceAccountRequest(service_account_id=created.service_account.id), metadata=md(admin)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
