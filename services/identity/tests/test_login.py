"""Login through the real server: enumeration resistance, lockout, policy, rehash, audit events."""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import sqlalchemy as sa

from gatehouse.audit.v1 import audit_event_pb2
from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.status import bad_request, retry_info
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity
from gatehouse_identity.adapters.tables import outbox, users
from gatehouse_identity.config import IdentityConfig
from gatehouse_identity.domain.passwords import Hasher
from services.identity.tests.helpers import fails, md

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def audit_actions(identity) -> list[str]:
    async with identity.identity.store.transaction() as tx:
        rows = await tx.session.execute(sa.select(outbox.c.payload).where(outbox.c.topic == "audit"))
        return [audit_event_pb2.AuditEvent.FromString(r.payload).action for r in rows]


async def test_login_returns_tokens_and_claims(identity):
    email = "Ann.Example@Example.com "
    user_id = await identity.create_user(email)
    answer = await identity.login_response("ann.example@example.com")
    assert answer.user.id == user_id and answer.user.email == "ann.example@example.com"
    assert answer.refresh_token and answer.session_id
    assert answer.access_token_expire_time.ToSeconds() > time.time() + 800
    principal = await identity.identity.spec.verifier(answer.access_token)
    assert (principal.kind, principal.id, principal.session_id, principal.amr) == (
        "user",
        user_id,
        answer.session_id,
        ("pwd",),
    )
    claims = principal.claims
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "sid", "amr", "pt"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 900
    assert "identity.login.succeeded" in await audit_actions(identity)


async def test_unknown_email_wrong_password_and_disabled_are_indistinguishable(identity):
    await identity.create_user("bob@example.com")
    wrong = await fails(
        identity.login("bob@example.com", "not-the-password-123"), UNAUTH, "INVALID_CREDENTIALS"
    )
    unknown = await fails(
        identity.login("nobody@example.com", "not-the-password-123"), UNAUTH, "INVALID_CREDENTIALS"
    )
    assert wrong.details() == unknown.details() == "invalid email or password"
    actions = await audit_actions(identity)
    assert actions.count("identity.login.failed") == 2


async def test_unknown_email_costs_an_argon2_verification(tmp_path):
    """Timing: an unknown email is not answered faster than a wrong password (dummy hash)."""
    config = IdentityConfig(lockout_threshold=1000, provision_service_accounts=True)  # production argon2
    async with running_identity(tmp_path, config=config) as identity:
        await identity.create_user("carol@example.com")

        async def timed(email: str) -> float:
            started = time.perf_counter()
            await fails(identity.login(email, "wrong-password-xyz"), UNAUTH)
            return time.perf_counter() - started

        known, unknown = [], []
        for i in range(6):  # interleaved, so machine load hits both alike
            known.append(await timed("carol@example.com"))
            unknown.append(await timed(f"ghost{i}@example.com"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.4 < ratio < 2.5, (known, unknown)


async def test_lockout_after_five_failures_then_expiry(tmp_path, database_url):
    async with running_identity(tmp_path, database_url, lockout_duration=2.0) as identity:
        await identity.create_user("dave@example.com")
        for _ in range(5):
            await fails(
                identity.login("dave@example.com", "wrong-password-xyz"), UNAUTH, "INVALID_CREDENTIALS"
            )
        # locked: even the right password gets RESOURCE_EXHAUSTED, so correctness is not revealed
        right = await fails(
            identity.login("dave@example.com"), grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_LOCKED"
        )
        wrong = await fails(
            identity.login("dave@example.com", "wrong-password-xyz"), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert right.details() == wrong.details()
        assert retry_info(right).retry_delay.seconds >= 1
        # unknown emails lock the same way (no enumeration through the lockout)
        for _ in range(5):
            await fails(identity.login("ghost@example.com", "wrong-password-xyz"), UNAUTH)
        await fails(identity.login("ghost@example.com", "x" * 12), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "identity.login.locked" in await audit_actions(identity)
        await asyncio.sleep(2.2)
        assert await identity.login("dave@example.com")


async def test_failures_outside_the_window_do_not_lock(tmp_path):
    async with running_identity(tmp_path, lockout_window=1.0) as identity:
        await identity.create_user("erin@example.com")
        for _ in range(4):
            await fails(identity.login("erin@example.com", "wrong-password-xyz"), UNAUTH)
        await asyncio.sleep(1.1)
        for _ in range(4):
            await fails(identity.login("erin@example.com", "wrong-password-xyz"), UNAUTH)
        assert await identity.login("erin@example.com")


async def test_success_resets_the_failure_count(identity):
    await identity.create_user("fay@example.com")
    for _ in range(4):
        await fails(identity.login("fay@example.com", "wrong-password-xyz"), UNAUTH)
    await identity.login("fay@example.com")
    for _ in range(4):
        await fails(identity.login("fay@example.com", "wrong-password-xyz"), UNAUTH)
    assert await identity.login("fay@example.com")


async def test_password_policy_field_violations(identity):
    svc = await identity.service_metadata("tenancy")
    err = await fails(
        identity.stub.CreateUser(
            pb.CreateUserRequest(email="gina@example.com", display_name="Gina", password="gina1"),
            metadata=svc,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    descriptions = [(v.field, v.description) for v in bad_request(err).field_violations]
    assert descriptions == [
        ("password", "must be at least 12 characters"),
        ("password", "must not contain the email's local part"),
    ]
    err = await fails(
        identity.stub.CreateUser(
            pb.CreateUserRequest(email="not-an-email", display_name="", password="Password1234"), metadata=svc
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = {(v.field, v.description) for v in bad_request(err).field_violations}
    assert fields == {
        ("email", "is not a valid email address"),
        ("display_name", "must be 1 to 200 characters"),
        ("password", "is a commonly used password"),
    }


async def test_rehash_on_login_when_parameters_change(tmp_path, database_url):
    async with running_identity(tmp_path, database_url) as identity:
        user_id = await identity.create_user("hal@example.com")
        svc = identity.identity.service

        async def stored_hash() -> str:
            async with identity.identity.store.transaction() as tx:
                return (
                    await tx.session.execute(sa.select(users.c.password_hash).where(users.c.id == user_id))
                ).scalar_one()

        before = await stored_hash()
        assert "m=1024,t=1,p=1" in before
        svc.hasher = Hasher(time_cost=2, memory_kib=2048, parallelism=1)
        await identity.login("hal@example.com")
        after = await stored_hash()
        assert "m=2048,t=2,p=1" in after and after != before
        assert await identity.login("hal@example.com", DEFAULT_PASSWORD)


async def test_disabled_token_header_is_refused_even_on_public_login(identity):
    await identity.create_user("ivy@example.com")
    await fails(
        identity.stub.Login(
            pb.LoginRequest(email="ivy@example.com", password=DEFAULT_PASSWORD), metadata=md("x.y.z")
        ),
        UNAUTH,
        "TOKEN_INVALID",
    )
