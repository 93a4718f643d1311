"""Signing keys and access tokens (ES256 JWTs via pyjwt + cryptography).

Identity owns the private keys; every other service only sees public keys
(:func:`public_jwk`) through ``GetJwks``. Nothing here hand-rolls crypto: key
generation, PEM encryption and signatures are cryptography's, the token format
is pyjwt's.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES256"
ALLOWED_ALGORITHMS = ("ES256",)
PRINCIPAL_CLAIM = "pt"
PRINCIPAL_TYPES = ("user", "service")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


def generate_signing_key() -> SigningKey:
    """A new ECDSA P-256 key with a random url-safe kid."""
    return SigningKey(kid=secrets.token_urlsafe(12), private_key=ec.generate_private_key(ec.SECP256R1()))


def public_jwk(key: SigningKey | ec.EllipticCurvePublicKey, kid: str | None = None) -> dict[str, str]:
    """RFC 7517 JWK of the public half: kid, kty, crv, alg, use, x, y."""
    public = key.public_key if isinstance(key, SigningKey) else key
    jwk = json.loads(ECAlgorithm.to_jwk(public))
    jwk.update({"kid": kid or key.kid, "alg": ALGORITHM, "use": "sig"})
    return {k: jwk[k] for k in ("kid", "kty", "crv", "alg", "use", "x", "y")}


def jwk_to_public_key(jwk: dict[str, Any]):
    """The public key of a JWK dict; ValueError for a JWK of a kind we do not accept."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or jwk.get("alg", ALGORITHM) != ALGORITHM:
        raise ValueError(
            f"unsupported JWK (kty={jwk.get('kty')}, crv={jwk.get('crv')}, alg={jwk.get('alg')})"
        )
    key = ECAlgorithm.from_jwk(json.dumps(jwk))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("JWK must hold a public key")
    return key


def issue_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    principal_type: str,
    session_id: str | None = None,
    amr: tuple[str, ...] | list[str] = (),
    ttl_seconds: int = 900,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed access token with iss, aud, sub, exp, iat, nbf, jti, sid, amr and pt."""
    if principal_type not in PRINCIPAL_TYPES:
        raise ValueError(f"principal_type must be one of {PRINCIPAL_TYPES}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
        PRINCIPAL_CLAIM: principal_type,
        "amr": list(amr),
    }
    if session_id:
        claims["sid"] = session_id
    claims.update(extra or {})
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def private_key_to_pem(key: SigningKey, password: bytes | None) -> bytes:
    """PEM (PKCS#8) of the private key, encrypted with ``password`` when given."""
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def private_key_from_pem(kid: str, pem: bytes, password: bytes | None) -> SigningKey:
    private = serialization.load_pem_private_key(pem, password=password)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return SigningKey(kid=kid, private_key=private)
