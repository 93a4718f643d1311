"""Sign-in racing a password change: the password is checked outside any transaction (argon2 takes
a while), so a change that committed meanwhile could not revoke the session that sign-in then made
(a review reproduced it: the attacker's 30-day refresh token kept working). Real identity server,
SQLite and PostgreSQL; the password check is held at a gate so the race is deterministic."""

from __future__ import annotations

import asyncio
import threading
import uuid

import grpc

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.status import error_info
from gatehouse.testing.identity import DEFAULT_PASSWORD
from services.identity.tests.helpers import fails, md

NEW_PASSWORD = "Brand-New-Orchid-Window-77"


async def test_a_sign_in_checked_before_a_password_change_gets_no_session(identity):
    email = f"v-{uuid.uuid4().hex[:8]}@example.com"
    await identity.create_user(email)
    victim = await identity.login_response(email)
    hasher = identity.identity.service.hasher
    real_verify = hasher.verify
    checked, release = threading.Event(), threading.Event()

    def gated_verify(stored, password):  # the attacker's check: done, then held before the session
        ok = real_verify(stored, password)
        checked.set()
        release.wait(10)
        return ok

    hasher.verify = gated_verify
    try:

        async def sign_in():
            return await identity.stub.Login(pb.LoginRequest(email=email, password=DEFAULT_PASSWORD))

        attacker = asyncio.create_task(sign_in())
        assert await asyncio.to_thread(checked.wait, 10)
        hasher.verify = real_verify  # the victim's own checks run normally
        await identity.stub.ChangePassword(
            pb.ChangePasswordRequest(current_password=DEFAULT_PASSWORD, new_password=NEW_PASSWORD),
            metadata=md(victim.access_token),
        )
        release.set()
        await fails(attacker, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    finally:
        release.set()
        hasher.verify = real_verify
    # the victim still signs in with the new password, and the attacker's old one fails
    await identity.stub.Login(pb.LoginRequest(email=email, password=NEW_PASSWORD))
    await fails(
        identity.stub.Login(pb.LoginRequest(email=email, password=DEFAULT_PASSWORD)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_guesses_sent_at_once_are_counted_each(identity):
    # The lock was checked before and the failure counted after the password check, by a read
    # and a write: 40 guesses sent together were all checked (the right one among them signed
    # in), and two first failures at once collided on the throttle row (INTERNAL, uncounted).
    # (A right password counted within the threshold signs in and clears the count, as before.)
    email = f"g-{uuid.uuid4().hex[:8]}@example.com"
    await identity.create_user(email)
    threshold = identity.identity.service.config.lockout_threshold

    async def guess(password: str) -> str:
        try:
            await identity.stub.Login(pb.LoginRequest(email=email, password=password))
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return error_info(exc).reason if error_info(exc) else exc.code().name

    passwords = [f"wrong-{i}" for i in range(40)]
    passwords[-1] = DEFAULT_PASSWORD  # sent last: counted past the threshold, so refused too
    answers = await asyncio.gather(*(guess(p) for p in passwords))
    assert set(answers) <= {"INVALID_CREDENTIALS", "LOGIN_LOCKED", "OK"}, answers  # never INTERNAL
    assert answers.count("INVALID_CREDENTIALS") + answers.count("OK") <= threshold, answers
    assert answers.count("LOGIN_LOCKED") >= 40 - threshold
    # and the account stays locked, for the right password too
    assert await guess(DEFAULT_PASSWORD) == "LOGIN_LOCKED"
