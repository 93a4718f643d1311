"""User RPCs through the real server with real authz: caller rules, pagination, updates, fail-closed."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.identity.v1 import user_pb2
from gatehouse.kit.status import bad_request
from services.identity.tests.helpers import admin_token, all_pages, fails, md
from services.identity.tests.test_login import audit_actions

DENIED = grpc.StatusCode.PERMISSION_DENIED
PASSWORD = "Tall-Lantern-Quietly-42"


def create(email: str, request_id: str = "") -> pb.CreateUserRequest:
    return pb.CreateUserRequest(email=email, display_name="Someone", password=PASSWORD, request_id=request_id)


async def test_create_user_rules(identity_authz):
    identity = identity_authz
    _, admin = await admin_token(identity)
    _, nobody = await identity.user_token()
    await fails(
        identity.stub.CreateUser(create("uma@example.com"), metadata=md(nobody)), DENIED, "CAPABILITY_DENIED"
    )
    made = await identity.stub.CreateUser(create("  Uma@Example.com", "req-1"), metadata=md(admin))
    assert made.user.email == "uma@example.com" and made.user.state == user_pb2.USER_STATE_ACTIVE
    retried = await identity.stub.CreateUser(create("uma@example.com", "req-1"), metadata=md(admin))
    assert retried.user.id == made.user.id  # idempotent by request id
    await fails(
        identity.stub.CreateUser(
            create("UMA@example.com"), metadata=await identity.service_metadata("tenancy")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    actions = await audit_actions(identity)
    assert actions.count("identity.user.created") == 3  # nobody, admin, uma
    assert actions.count("identity.access.denied") == 1  # nobody's attempt


async def test_admin_rpcs_fail_closed_when_authz_is_down(identity):
    _, token = await identity.user_token()
    for call in (
        identity.stub.CreateUser(create("vic@example.com"), metadata=md(token)),
        identity.stub.ListUsers(pb.ListUsersRequest(), metadata=md(token)),
        identity.stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=md(token)),
    ):
        await fails(call, grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")


async def test_get_user_is_self_service_or_admin(identity_authz):
    identity = identity_authz
    ann, ann_token = await identity.user_token()
    bob, _ = await identity.user_token()
    _, admin = await admin_token(identity)
    assert (
        await identity.stub.GetUser(pb.GetUserRequest(user_id=ann), metadata=md(ann_token))
    ).user.id == ann
    await fails(
        identity.stub.GetUser(pb.GetUserRequest(user_id=bob), metadata=md(ann_token)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await identity.stub.GetUser(pb.GetUserRequest(user_id=bob), metadata=md(admin))).user.id == bob
    svc = await identity.service_metadata("tenancy")
    assert (await identity.stub.GetUser(pb.GetUserRequest(user_id=bob), metadata=svc)).user.id == bob
    await fails(
        identity.stub.GetUser(pb.GetUserRequest(user_id="nope"), metadata=svc), grpc.StatusCode.NOT_FOUND
    )


async def test_batch_get_and_lookup_are_for_service_accounts(identity):
    ann, ann_token = await identity.user_token("ann@example.com")
    bob, _ = await identity.user_token()
    svc = await identity.service_metadata("tenancy")
    batch = await identity.stub.BatchGetUsers(
        pb.BatchGetUsersRequest(user_ids=[bob, "unknown", ann]), metadata=svc
    )
    assert [u.id for u in batch.users] == [bob, ann]
    found = await identity.stub.LookupUserByEmail(
        pb.LookupUserByEmailRequest(email=" ANN@example.COM "), metadata=svc
    )
    assert found.user.id == ann
    await fails(
        identity.stub.LookupUserByEmail(pb.LookupUserByEmailRequest(email="zed@example.com"), metadata=svc),
        grpc.StatusCode.NOT_FOUND,
    )
    for call in (
        identity.stub.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=[bob]), metadata=md(ann_token)),
        identity.stub.LookupUserByEmail(
            pb.LookupUserByEmailRequest(email="ann@example.com"), metadata=md(ann_token)
        ),
    ):
        await fails(call, DENIED, "SERVICE_ACCOUNT_REQUIRED")
    await fails(
        identity.stub.BatchGetUsers(pb.BatchGetUsersRequest(user_ids=[ann])), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_list_users_paginates_and_filters(identity_authz):
    identity = identity_authz
    admin_id, admin = await admin_token(identity)
    ids = [admin_id] + [await identity.create_user(f"list{i}@example.com") for i in range(4)]
    pages = await all_pages(
        identity.stub.ListUsers, lambda t: pb.ListUsersRequest(page_size=2, page_token=t), "users", md(admin)
    )
    assert [u.id for u in pages] == sorted(ids)
    filtered = await identity.stub.ListUsers(pb.ListUsersRequest(filter="email:list"), metadata=md(admin))
    assert len(filtered.users) == 4
    await identity.stub.DisableUser(pb.DisableUserRequest(user_id=ids[1]), metadata=md(admin))
    disabled = await identity.stub.ListUsers(pb.ListUsersRequest(filter="state:DISABLED"), metadata=md(admin))
    assert [u.id for u in disabled.users] == [ids[1]]
    await fails(
        identity.stub.ListUsers(pb.ListUsersRequest(filter="name:x"), metadata=md(admin)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        identity.stub.ListUsers(pb.ListUsersRequest(page_token="!!"), metadata=md(admin)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _, nobody = await identity.user_token()
    await fails(identity.stub.ListUsers(pb.ListUsersRequest(), metadata=md(nobody)), DENIED)


def update(user_id: str, paths: list[str], etag: str = "", **values) -> pb.UpdateUserRequest:
    return pb.UpdateUserRequest(
        user=user_pb2.User(id=user_id, etag=etag, **values), update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


async def test_update_user_rules(identity_authz):
    identity = identity_authz
    ann, ann_token = await identity.user_token()
    bob, _ = await identity.user_token()
    _, admin = await admin_token(identity)
    me = (await identity.stub.GetUser(pb.GetUserRequest(user_id=ann), metadata=md(ann_token))).user
    renamed = await identity.stub.UpdateUser(
        update(ann, ["display_name"], me.etag, display_name="Ann B."), metadata=md(ann_token)
    )
    assert renamed.user.display_name == "Ann B." and renamed.user.etag != me.etag
    retry = update(ann, ["display_name"], renamed.user.etag, display_name="Ann C.")
    retry.request_id = "u-1"
    first = await identity.stub.UpdateUser(retry, metadata=md(ann_token))
    again = await identity.stub.UpdateUser(retry, metadata=md(ann_token))  # same request id: no etag error
    assert again.user.etag == first.user.etag and again.user.display_name == "Ann C."
    await fails(
        identity.stub.UpdateUser(
            update(ann, ["display_name"], me.etag, display_name="X"), metadata=md(ann_token)
        ),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    await fails(
        identity.stub.UpdateUser(update(ann, ["email"], email="ann2@example.com"), metadata=md(ann_token)),
        DENIED,
    )
    await fails(
        identity.stub.UpdateUser(
            update(bob, ["display_name"], display_name="Hacked"), metadata=md(ann_token)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    err = await fails(
        identity.stub.UpdateUser(
            update(ann, ["state", "display_name"], display_name=""), metadata=md(ann_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {v.field for v in bad_request(err).field_violations} == {"update_mask", "user.display_name"}
    changed = await identity.stub.UpdateUser(
        update(ann, ["email"], email="Ann2@Example.com"), metadata=md(admin)
    )
    assert changed.user.email == "ann2@example.com"
    assert await identity.login("ann2@example.com")
    bob_email = (await identity.stub.GetUser(pb.GetUserRequest(user_id=bob), metadata=md(admin))).user.email
    await fails(
        identity.stub.UpdateUser(update(ann, ["email"], email=bob_email), metadata=md(admin)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert "identity.user.updated" in await audit_actions(identity)
