"""TOTP through the real server: enrollment, required / wrong / replayed codes, recovery codes, disable."""

from __future__ import annotations

import time

import grpc
import pyotp
import sqlalchemy as sa

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse_identity.adapters.tables import recovery_codes, totp
from services.identity.tests.helpers import fails, md

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
PASSWORD = "Tall-Lantern-Quietly-42"


def code_at(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * offset_steps)


async def enroll(identity, email: str):
    user_id = await identity.create_user(email)
    token = await identity.login(email)
    begun = await identity.stub.BeginTotpEnrollment(pb.BeginTotpEnrollmentRequest(), metadata=md(token))
    assert begun.otpauth_uri.startswith("otpauth://totp/") and begun.secret in begun.otpauth_uri
    await fails(
        identity.stub.ConfirmTotpEnrollment(
            pb.ConfirmTotpEnrollmentRequest(code="000000"), metadata=md(token)
        )
        if code_at(begun.secret) != "000000"
        else identity.stub.ConfirmTotpEnrollment(
            pb.ConfirmTotpEnrollmentRequest(code="111111"), metadata=md(token)
        ),
        UNAUTH,
        "INVALID_SECOND_FACTOR",
    )
    # the code used to confirm is "used": confirm with the previous step so a login can use the current one
    confirmed = await identity.stub.ConfirmTotpEnrollment(
        pb.ConfirmTotpEnrollmentRequest(code=code_at(begun.secret, -1)), metadata=md(token)
    )
    return user_id, token, begun.secret, list(confirmed.recovery_codes)


async def test_totp_enrollment_and_login(identity):
    user_id, token, secret, codes = await enroll(identity, "quinn@example.com")
    assert len(codes) == 10 and len(set(codes)) == 10
    # secrets at rest: TOTP secret encrypted, recovery codes hashed
    async with identity.identity.store.transaction() as tx:
        stored = (await tx.session.execute(sa.select(totp.c.secret_encrypted))).scalar_one()
        hashes = (await tx.session.execute(sa.select(recovery_codes.c.code_hash))).scalars().all()
    assert secret.encode() not in stored and not set(codes) & set(hashes)
    await fails(
        identity.stub.BeginTotpEnrollment(pb.BeginTotpEnrollmentRequest(), metadata=md(token)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOTP_STATE",
    )
    # required
    await fails(identity.login("quinn@example.com"), UNAUTH, "MFA_REQUIRED")
    # wrong
    wrong = "123456" if code_at(secret) != "123456" else "654321"
    await fails(identity.login("quinn@example.com", totp_code=wrong), UNAUTH, "INVALID_SECOND_FACTOR")
    # right: amr has otp
    code = code_at(secret)
    answer = await identity.login_response("quinn@example.com", totp_code=code)
    principal = await identity.identity.spec.verifier(answer.access_token)
    assert principal.amr == ("pwd", "otp")
    assert (
        await identity.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(answer.access_token))
    ).user.mfa_enabled
    # replayed within its window
    await fails(identity.login("quinn@example.com", totp_code=code), UNAUTH, "INVALID_SECOND_FACTOR")
    # an older step than the last one used is refused too
    await fails(
        identity.login("quinn@example.com", totp_code=code_at(secret, -1)), UNAUTH, "INVALID_SECOND_FACTOR"
    )


async def test_recovery_code_works_once(identity):
    _, _, _, codes = await enroll(identity, "rita@example.com")
    answer = await identity.login_response("rita@example.com", totp_code=codes[0].upper())
    assert answer.access_token
    await fails(identity.login("rita@example.com", totp_code=codes[0]), UNAUTH, "INVALID_SECOND_FACTOR")
    assert await identity.login("rita@example.com", totp_code=codes[1].replace("-", ""))


async def test_disable_totp_needs_password_and_code(identity):
    _user_id, token, _secret, codes = await enroll(identity, "sam@example.com")
    await fails(
        identity.stub.DisableTotp(
            pb.DisableTotpRequest(password="wrong-password-1", code=codes[0]), metadata=md(token)
        ),
        UNAUTH,
        "INVALID_CREDENTIALS",
    )
    await fails(
        identity.stub.DisableTotp(pb.DisableTotpRequest(password=PASSWORD, code="99999"), metadata=md(token)),
        UNAUTH,
        "INVALID_SECOND_FACTOR",
    )
    await identity.stub.DisableTotp(
        pb.DisableTotpRequest(password=PASSWORD, code=codes[2]), metadata=md(token)
    )
    answer = await identity.login_response("sam@example.com")
    assert not answer.user.mfa_enabled
    await fails(
        identity.stub.DisableTotp(
            pb.DisableTotpRequest(password=PASSWORD, code=codes[3]), metadata=md(token)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOTP_STATE",
    )


async def test_wrong_second_factors_count_towards_lockout(identity):
    _, _, secret, _ = await enroll(identity, "tia@example.com")
    wrong = "123456" if code_at(secret) != "123456" else "654321"
    for _ in range(5):
        await fails(identity.login("tia@example.com", totp_code=wrong), UNAUTH)
    await fails(
        identity.login("tia@example.com", totp_code=code_at(secret)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LOGIN_LOCKED",
    )
