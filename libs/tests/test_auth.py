"""Token verification with real keys and real signed tokens.

Each rejection case removes exactly one property of a good token, so a test
fails if the corresponding check is removed from TokenVerifier.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc, user_pb2
from gatehouse.kit import errors
from gatehouse.kit.auth import JwksCache, RevocationList, TokenVerifier
from gatehouse.kit.keys import (
    generate_signing_key,
    issue_token,
    private_key_from_pem,
    private_key_to_pem,
    public_jwk,
)
from gatehouse.kit.peers import jwks_fetcher
from gatehouse.kit.status import error_info
from gatehouse.testing.servers import call, make_server, raw_service

ISS, AUD = "gatehouse", "gatehouse"


class Keys:
    """A JWKS source whose key set a test can change; counts fetches."""

    def __init__(self, *keys):
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def fetch(self) -> list[dict]:
        self.fetches += 1
        if self.fail:
            raise ConnectionError("identity down")
        return [public_jwk(k) for k in self.keys]


def token(key, **overrides) -> str:
    args = {"issuer": ISS, "audience": AUD, "subject": "u1", "principal_type": "user", "session_id": "s1"}
    args.update(overrides)
    return issue_token(key, **args)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def source(key):
    return Keys(key)


@pytest.fixture
def verifier(source):
    return TokenVerifier(JwksCache(source.fetch, min_refetch=0.2), issuer=ISS, audience=AUD)


async def expect_invalid(verifier, tok, reason="TOKEN_INVALID"):
    with pytest.raises(errors.Unauthenticated) as info:
        await verifier.verify(tok)
    assert info.value.reason == reason
    return info.value


async def test_good_user_and_service_tokens(verifier, key):
    p = await verifier.verify(token(key, amr=("pwd", "otp")))
    assert (p.kind, p.id, p.session_id, p.amr) == ("user", "u1", "s1", ("pwd", "otp"))
    assert p.subject == "user:u1" and p.token_id
    s = await verifier.verify(token(key, subject="svc1", principal_type="service", session_id=None))
    assert s.subject == "service:svc1" and s.is_service and s.session_id is None
    assert s.service_name is None and p.service_name is None  # no name claim: no name
    named = await verifier.verify(
        token(key, subject="svc1", principal_type="service", session_id=None, extra={"svc": "tenancy"})
    )
    assert named.service_name == "tenancy"
    # a user token cannot claim to be a service by carrying the claim
    user = await verifier.verify(token(key, extra={"svc": "tenancy"}))
    assert user.service_name is None


async def test_expired(verifier, key):
    await expect_invalid(verifier, token(key, now=time.time() - 3600, ttl_seconds=60))


async def test_not_yet_valid(verifier, key):
    await expect_invalid(verifier, token(key, now=time.time() + 600))


async def test_wrong_issuer_and_audience(verifier, key):
    await expect_invalid(verifier, token(key, issuer="someone-else"))
    await expect_invalid(verifier, token(key, audience="another-api"))


async def test_alg_none(verifier, key):
    good = jwt.decode(token(key), options={"verify_signature": False})
    forged = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{b64(good)}."
    await expect_invalid(verifier, forged)


async def test_hs256_signed_with_the_public_key(verifier, key):
    claims = jwt.decode(token(key), options={"verify_signature": False})
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    import hashlib
    import hmac

    signing_input = f"{b64(header)}.{b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(
        b"="
    )
    await expect_invalid(verifier, f"{signing_input}.{sig.decode()}")


async def test_tampered_payload(verifier, key):
    head, payload, sig = token(key).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    await expect_invalid(verifier, f"{head}.{b64(claims)}.{sig}")


async def test_signed_by_a_key_not_in_the_jwks(verifier):
    stranger = generate_signing_key()
    await expect_invalid(verifier, token(stranger))


async def test_key_not_in_jwks_even_with_a_known_kid(verifier, key):
    impostor = generate_signing_key()
    object.__setattr__(impostor, "kid", key.kid)
    await expect_invalid(verifier, token(impostor))


async def test_missing_kid_and_garbage(verifier, key):
    claims = jwt.decode(token(key), options={"verify_signature": False})
    no_kid = jwt.encode(claims, key.private_key, algorithm="ES256")
    await expect_invalid(verifier, no_kid)
    for junk in ("", "abc", "a.b.c", "...."):
        await expect_invalid(verifier, junk)


async def test_missing_required_claims_and_unknown_principal_type(verifier, key):
    claims = jwt.decode(token(key), options={"verify_signature": False})
    for claim in ("jti", "pt", "sub"):
        partial = {k: v for k, v in claims.items() if k != claim}
        await expect_invalid(
            verifier, jwt.encode(partial, key.private_key, "ES256", headers={"kid": key.kid})
        )
    odd = dict(claims, pt="robot")
    await expect_invalid(verifier, jwt.encode(odd, key.private_key, "ES256", headers={"kid": key.kid}))


async def test_rotation_keeps_old_tokens_and_learns_new_kid(source, verifier, key):
    old = token(key)
    await verifier.verify(old)
    new_key = generate_signing_key()
    source.keys.insert(0, new_key)
    await asyncio.sleep(0.25)
    # a token of the new key makes the cache re-fetch on the unknown kid
    assert (await verifier.verify(token(new_key))).id == "u1"
    assert (await verifier.verify(old)).id == "u1"
    # once identity retires the old key, its tokens stop verifying
    source.keys.remove(key)
    await asyncio.sleep(0.25)
    await expect_invalid(verifier, token(generate_signing_key()))  # unknown kid → re-fetch
    await expect_invalid(verifier, old)


async def test_unknown_kid_refetch_is_rate_limited(source, verifier):
    await verifier.verify(token(source.keys[0]))
    before = source.fetches
    for _ in range(20):
        await expect_invalid(verifier, token(generate_signing_key()))
    assert source.fetches - before <= 1


async def test_fetch_failure_serves_cached_keys_and_no_keys_is_unavailable(source, verifier, key):
    await verifier.verify(token(key))
    source.fail = True
    await asyncio.sleep(0.25)
    assert (await verifier.verify(token(key))).id == "u1"
    empty = Keys()
    empty.fail = True
    cold = TokenVerifier(JwksCache(empty.fetch), issuer=ISS, audience=AUD)
    with pytest.raises(errors.Unavailable):
        await cold.verify(token(key))


async def test_revoked_session(source, key):
    revoked = RevocationList()
    verifier = TokenVerifier(JwksCache(source.fetch), issuer=ISS, audience=AUD, is_revoked=revoked.is_revoked)
    await verifier.verify(token(key, session_id="s9"))
    revoked.apply([("s9", time.time() + 900, 1)])
    await expect_invalid(verifier, token(key, session_id="s9"), reason="SESSION_REVOKED")
    assert (await verifier.verify(token(key, session_id="s10"))).session_id == "s10"


def test_encrypted_pem_round_trip(key):
    pem = private_key_to_pem(key, b"kek")
    assert b"ENCRYPTED" in pem
    again = private_key_from_pem(key.kid, pem, b"kek")
    assert public_jwk(again) == public_jwk(key)
    with pytest.raises((ValueError, TypeError)):
        private_key_from_pem(key.kid, pem, b"wrong")


class JwksOnlyIdentity(identity_service_pb2_grpc.IdentityServiceServicer):
    """Stands in for identity's GetJwks, which the identity issue builds; the rest is UNIMPLEMENTED."""

    def __init__(self, keys: Keys):
        self.keys = keys

    async def GetJwks(self, request, context):
        return identity_service_pb2.GetJwksResponse(keys=[user_pb2.Jwk(**k) for k in await self.keys.fetch()])


async def test_over_the_wire_jwks_and_auth_interceptor(tmp_path, key, source):
    identity = grpc.aio.server()
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(JwksOnlyIdentity(source), identity)
    port = identity.add_insecure_port("127.0.0.1:0")
    await identity.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    verifier = TokenVerifier(JwksCache(jwks_fetcher(channel), min_refetch=0.1), issuer=ISS, audience=AUD)

    async def whoami(request: bytes, context) -> bytes:
        from gatehouse.kit.context import current_principal

        return current_principal().subject.encode()

    server = make_server(tmp_path, raw_service({"WhoAmI": whoami}), verifier=verifier.verify)
    server_port = await server.start()
    await server.wait_started()
    try:
        body, _ = await call(server_port, "WhoAmI", metadata=[("authorization", f"Bearer {token(key)}")])
        assert body == b"user:u1"
        rotated = generate_signing_key()
        source.keys.insert(0, rotated)
        await asyncio.sleep(0.15)
        body, _ = await call(server_port, "WhoAmI", metadata=[("authorization", f"Bearer {token(rotated)}")])
        assert body == b"user:u1"
        expired = token(key, now=time.time() - 3600, ttl_seconds=60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(server_port, "WhoAmI", metadata=[("authorization", f"Bearer {expired}")])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(info.value).reason == "TOKEN_INVALID"
    finally:
        await server.stop(0)
        await channel.close()
        await identity.stop(0)
