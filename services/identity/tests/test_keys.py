"""Signing keys: KEK-encrypted at rest, rotation keeps old tokens valid until they expire, bad tokens refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time

import grpc
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.keys import issue_token
from gatehouse.testing.identity import running_identity
from gatehouse_identity.adapters.keyring import KEK_FILE
from gatehouse_identity.adapters.tables import signing_keys
from services.identity.tests.helpers import authz_self_check, eventually, fails, get_self, md

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_private_keys_are_encrypted_with_the_development_kek(identity):
    kek = identity.data_dir / KEK_FILE
    assert stat.S_IMODE(os.stat(kek).st_mode) == 0o600
    async with identity.identity.store.transaction() as tx:
        pem = (await tx.session.execute(sa.select(signing_keys.c.private_pem_encrypted))).scalar_one()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    jwks = await identity.stub.GetJwks(pb.GetJwksRequest())
    key = jwks.keys[0]
    assert (key.kty, key.crv, key.alg, key.use) == ("EC", "P-256", "ES256", "sig") and key.x and key.y


async def test_configured_kek_is_used_and_a_wrong_one_stops_start_up(tmp_path):
    async with running_identity(tmp_path, kek="k" * 40) as identity:
        assert not (identity.data_dir / KEK_FILE).exists()
        assert await identity.user_token()
    with pytest.raises(RuntimeError, match="cannot be decrypted"):
        async with running_identity(tmp_path, kek="x" * 40):
            pass


async def test_rotation_publishes_first_signs_later_and_old_tokens_stay_valid(tmp_path):
    async with running_identity(tmp_path, with_authz=True, key_activation_delay=6.0) as identity:
        user_id, old_token = await identity.user_token()
        email = (await get_self(identity, old_token, user_id)).user.email
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        await identity.make_platform_admin(user_id)
        _, nobody = await identity.user_token()
        await fails(
            identity.stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=md(nobody)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        rotated = await identity.stub.RotateSigningKey(
            pb.RotateSigningKeyRequest(request_id="r1"), metadata=md(old_token)
        )
        again = await identity.stub.RotateSigningKey(
            pb.RotateSigningKeyRequest(request_id="r1"), metadata=md(old_token)
        )
        assert rotated.key.kid == again.key.kid != old_kid  # idempotent by request id
        kids = [k.kid for k in (await identity.stub.GetJwks(pb.GetJwksRequest())).keys]
        assert kids == [rotated.key.kid, old_kid]  # the new one is published at once, current first
        assert jwt.get_unverified_header(await identity.login(email))["kid"] == old_kid  # not signing yet

        async def signed_with_new_key():
            token = await identity.login(email)
            return token if jwt.get_unverified_header(token)["kid"] == rotated.key.kid else None

        new_token = await eventually(signed_with_new_key, timeout=10.0, interval=0.5)
        # old and new tokens work at identity and at a second service (authz fetches the new key)
        for token in (old_token, new_token):
            assert (await get_self(identity, token, user_id)).user.id == user_id
            assert (await authz_self_check(identity, token, user_id)).allowed


async def test_old_key_is_retired_after_its_tokens_expired(tmp_path):
    async with running_identity(
        tmp_path,
        with_authz=True,
        access_token_ttl=1,
        service_token_ttl=1,
        token_leeway=0.5,
        key_retire_grace=0.5,
        key_activation_delay=0.1,
    ) as identity:
        user_id, token = await identity.user_token()
        old_kid = jwt.get_unverified_header(token)["kid"]
        await identity.make_platform_admin(user_id)
        rotated = await identity.stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=md(token))
        assert [k.kid for k in (await identity.stub.GetJwks(pb.GetJwksRequest())).keys] == [
            rotated.key.kid,
            old_kid,
        ]

        async def old_key_retired():
            keys = (await identity.stub.GetJwks(pb.GetJwksRequest())).keys
            return [k.kid for k in keys] == [rotated.key.kid]

        await eventually(old_key_retired, timeout=8.0, interval=0.25)

        async def refused():  # expired (the verifiers allow 5 s of clock skew)
            try:
                await get_self(identity, token, user_id)
            except grpc.aio.AioRpcError as exc:
                return exc.code() == UNAUTH
            return False

        await eventually(refused, timeout=10.0, interval=0.5)


async def test_bad_tokens_are_refused_by_identity_and_a_second_service(identity_authz):
    identity = identity_authz
    user_id, good = await identity.user_token()
    key = await identity.identity.keyring.current()

    def mint(**overrides):
        args = dict(
            issuer="gatehouse", audience="gatehouse", subject=user_id, principal_type="user", session_id="s"
        )
        args.update(overrides)
        return issue_token(key, **args)

    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "someone-else"
    tampered = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    none_alg = f"{b64(json.dumps({'alg': 'none', 'kid': key.kid}).encode())}.{payload}."
    public_pem = key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    hs_signature = b64(hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest())
    bad = {
        "HS256 with the public key as secret": f"{hs_header}.{payload}.{hs_signature}",
        "tampered": tampered,
        "expired": mint(now=time.time() - 3600, ttl_seconds=60),
        "wrong audience": mint(audience="someone-else"),
        "wrong issuer": mint(issuer="evil"),
        "alg none": none_alg,
        "unknown principal type": mint(extra={"pt": "robot"}),
        "garbage": "not-a-jwt",
    }
    assert (await get_self(identity, good, user_id)).user.id == user_id
    for name, token in bad.items():
        err = await fails(get_self(identity, token, user_id), UNAUTH, "TOKEN_INVALID")
        assert err.details() == "invalid or expired access token", name
        await fails(authz_self_check(identity, token, user_id), UNAUTH)
