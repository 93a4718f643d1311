"""Refresh rotation, reuse detection, logout / revoke seen by a second service, passwords, disable."""

from __future__ import annotations

import grpc

from gatehouse.authz.v1 import authz_service_pb2, decision_pb2
from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.identity.v1 import user_pb2
from gatehouse.kit.status import bad_request
from gatehouse.type.v1 import refs_pb2
from services.identity.tests.helpers import (
    admin_token,
    authz_self_check,
    authz_stub,
    eventually,
    fails,
    get_self,
    md,
    refused_by_authz,
)

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
NEW_PASSWORD = "Another-Long-Phrase-77"


async def refused_by_identity(identity, token: str, user_id: str) -> bool:
    try:
        await get_self(identity, token, user_id)
    except grpc.aio.AioRpcError as exc:
        return exc.code() == UNAUTH
    return False


async def test_refresh_rotates_and_reuse_revokes_the_family(identity):
    user_id = await identity.create_user("kim@example.com")
    first = await identity.login_response("kim@example.com")
    second = await identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=first.refresh_token))
    assert second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    assert (await get_self(identity, second.access_token, user_id)).user.id == user_id
    # the rotated token comes back: theft; the whole session is revoked
    await fails(
        identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=first.refresh_token)),
        UNAUTH,
        "REFRESH_TOKEN_REUSED",
    )
    # the family is gone: the newest token no longer works either
    await fails(
        identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=second.refresh_token)),
        UNAUTH,
        "SESSION_REVOKED",
    )
    await eventually(lambda: refused_by_identity(identity, second.access_token, user_id))
    sessions = await identity.stub.ListSessions(
        pb.ListSessionsRequest(show_revoked=True), metadata=md(await identity.login("kim@example.com"))
    )
    revoked = next(s for s in sessions.sessions if s.id == first.session_id)
    assert revoked.HasField("revoke_time")
    await fails(identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token="nope")), UNAUTH)


async def test_logout_is_refused_by_a_second_service_within_5_seconds(identity_authz):
    identity = identity_authz
    user_id = await identity.create_user("lee@example.com")
    login = await identity.login_response("lee@example.com")
    assert not (await authz_self_check(identity, login.access_token, user_id)).allowed  # accepted, not admin
    await identity.stub.Logout(pb.LogoutRequest(refresh_token=login.refresh_token))
    await identity.stub.Logout(pb.LogoutRequest(refresh_token=login.refresh_token))  # idempotent
    await eventually(lambda: refused_by_authz(identity, login.access_token, user_id), timeout=5.0)
    await fails(
        identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=login.refresh_token)), UNAUTH
    )


async def test_revoke_session_own_and_by_admin_and_not_others(identity_authz):
    identity = identity_authz
    user_id = await identity.create_user("max@example.com")
    one = await identity.login_response("max@example.com")
    two = await identity.login_response("max@example.com")
    listed = await identity.stub.ListSessions(pb.ListSessionsRequest(), metadata=md(one.access_token))
    assert [s.id for s in listed.sessions] == [two.session_id, one.session_id]  # newest first
    # another user cannot see or revoke them
    _, other = await identity.user_token()
    await fails(
        identity.stub.RevokeSession(pb.RevokeSessionRequest(session_id=two.session_id), metadata=md(other)),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(
        identity.stub.ListSessions(pb.ListSessionsRequest(user_id=user_id), metadata=md(other)),
        grpc.StatusCode.NOT_FOUND,
    )
    revoked = await identity.stub.RevokeSession(
        pb.RevokeSessionRequest(session_id=two.session_id), metadata=md(one.access_token)
    )
    assert revoked.session.HasField("revoke_time")
    await eventually(lambda: refused_by_authz(identity, two.access_token, user_id))
    assert (await get_self(identity, one.access_token, user_id)).user.id == user_id
    # a platform admin may revoke anyone's session
    _, admin = await admin_token(identity)
    listed = await identity.stub.ListSessions(pb.ListSessionsRequest(user_id=user_id), metadata=md(admin))
    assert [s.id for s in listed.sessions] == [one.session_id]
    await identity.stub.RevokeSession(pb.RevokeSessionRequest(session_id=one.session_id), metadata=md(admin))
    await eventually(lambda: refused_by_authz(identity, one.access_token, user_id))


async def test_list_revocations_is_for_service_accounts(identity):
    user_id, token = await identity.user_token()
    await fails(
        identity.stub.ListRevocations(pb.ListRevocationsRequest(), metadata=md(token)),
        grpc.StatusCode.PERMISSION_DENIED,
        "SERVICE_ACCOUNT_REQUIRED",
    )
    login = await identity.login_response(
        (await identity.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(token))).user.email
    )
    await identity.stub.Logout(pb.LogoutRequest(refresh_token=login.refresh_token))
    svc = await identity.service_metadata("authz")
    answer = await identity.stub.ListRevocations(pb.ListRevocationsRequest(), metadata=svc)
    assert [(r.session_id, r.user_id) for r in answer.revocations] == [(login.session_id, user_id)]
    assert answer.last_sequence == answer.revocations[0].sequence
    later = await identity.stub.ListRevocations(
        pb.ListRevocationsRequest(after_sequence=answer.last_sequence), metadata=svc
    )
    assert list(later.revocations) == [] and later.last_sequence == answer.last_sequence
    stream = identity.stub.WatchRevocations(pb.WatchRevocationsRequest(after_sequence=0), metadata=svc)
    first = await stream.read()
    assert [r.session_id for r in first.revocations] == [login.session_id]
    stream.cancel()


async def test_change_password_revokes_other_sessions(identity):
    user_id = await identity.create_user("ned@example.com")
    keep = await identity.login_response("ned@example.com")
    other = await identity.login_response("ned@example.com")
    err = await fails(
        identity.stub.ChangePassword(
            pb.ChangePasswordRequest(current_password="Tall-Lantern-Quietly-42", new_password="short"),
            metadata=md(keep.access_token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {v.field for v in bad_request(err).field_violations} == {"new_password"}
    await fails(
        identity.stub.ChangePassword(
            pb.ChangePasswordRequest(current_password="wrong-password-123", new_password=NEW_PASSWORD),
            metadata=md(keep.access_token),
        ),
        UNAUTH,
    )
    await identity.stub.ChangePassword(
        pb.ChangePasswordRequest(current_password="Tall-Lantern-Quietly-42", new_password=NEW_PASSWORD),
        metadata=md(keep.access_token),
    )
    await eventually(lambda: refused_by_identity(identity, other.access_token, user_id))
    assert (await get_self(identity, keep.access_token, user_id)).user.id == user_id
    await fails(identity.login("ned@example.com"), UNAUTH)
    assert await identity.login("ned@example.com", NEW_PASSWORD)


async def test_password_reset_token_single_use(identity_authz):
    identity = identity_authz
    user_id = await identity.create_user("ola@example.com")
    session = await identity.login_response("ola@example.com")
    _, admin = await admin_token(identity)
    _, nobody = await identity.user_token()
    await fails(
        identity.stub.CreatePasswordResetToken(
            pb.CreatePasswordResetTokenRequest(user_id=user_id), metadata=md(nobody)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    created = await identity.stub.CreatePasswordResetToken(
        pb.CreatePasswordResetTokenRequest(user_id=user_id), metadata=md(admin)
    )
    assert 3500 < created.expire_time.ToSeconds() - session.access_token_expire_time.ToSeconds() + 900 < 3700
    await fails(
        identity.stub.ResetPassword(
            pb.ResetPasswordRequest(token=created.token, new_password="ola-is-my-name-1")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await identity.stub.ResetPassword(pb.ResetPasswordRequest(token=created.token, new_password=NEW_PASSWORD))
    await fails(
        identity.stub.ResetPassword(pb.ResetPasswordRequest(token=created.token, new_password=NEW_PASSWORD)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESET_TOKEN_INVALID",
    )
    await eventually(lambda: refused_by_authz(identity, session.access_token, user_id))
    assert await identity.login("ola@example.com", NEW_PASSWORD)


async def test_disabled_user_is_refused_everywhere(identity_authz):
    identity = identity_authz
    user_id = await identity.create_user("pia@example.com")
    await identity.make_platform_admin(user_id)
    login = await identity.login_response("pia@example.com")
    assert (await authz_self_check(identity, login.access_token, user_id)).allowed
    _, admin = await admin_token(identity)
    _, nobody = await identity.user_token()
    await fails(
        identity.stub.DisableUser(pb.DisableUserRequest(user_id=user_id), metadata=md(nobody)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    answer = await identity.stub.DisableUser(pb.DisableUserRequest(user_id=user_id), metadata=md(admin))
    assert answer.user.state == user_pb2.USER_STATE_DISABLED
    # login: the same answer as a wrong password; refresh refused; tokens refused at a second service
    err = await fails(identity.login("pia@example.com"), UNAUTH, "INVALID_CREDENTIALS")
    assert err.details() == "invalid email or password"
    await fails(
        identity.stub.RefreshSession(pb.RefreshSessionRequest(refresh_token=login.refresh_token)), UNAUTH
    )
    await eventually(lambda: refused_by_authz(identity, login.access_token, user_id))
    # authz was told: every check for the user denies (delivered by the outbox relay)
    svc = await identity.service_metadata("tenancy")
    check = authz_service_pb2.CheckCapabilityRequest(
        subject=refs_pb2.SubjectRef(type="user", id=user_id),
        resource=refs_pb2.ResourceRef(type="platform", id="platform"),
        capability="platform:manage_users",
    )

    async def denied_as_disabled():
        decision = await authz_stub(identity).CheckCapability(check, metadata=svc)
        return decision.reason == decision_pb2.DECISION_REASON_SUBJECT_DISABLED

    await eventually(denied_as_disabled)
    enabled = await identity.stub.EnableUser(pb.EnableUserRequest(user_id=user_id), metadata=md(admin))
    assert enabled.user.state == user_pb2.USER_STATE_ACTIVE

    async def allowed_again():
        return (await authz_stub(identity).CheckCapability(check, metadata=svc)).allowed

    await eventually(allowed_again)
    assert await identity.login("pia@example.com")


async def test_change_password_guesses_share_the_login_lockout(identity):
    await identity.create_user("guess@example.com")
    token = await identity.login("guess@example.com")
    for _ in range(5):
        await fails(
            identity.stub.ChangePassword(
                pb.ChangePasswordRequest(current_password="guess-number-123", new_password=NEW_PASSWORD),
                metadata=md(token),
            ),
            UNAUTH,
            "INVALID_CREDENTIALS",
        )
    await fails(
        identity.stub.ChangePassword(
            pb.ChangePasswordRequest(current_password="Tall-Lantern-Quietly-42", new_password=NEW_PASSWORD),
            metadata=md(token),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LOGIN_LOCKED",
    )
    await fails(identity.login("guess@example.com"), grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_LOCKED")
