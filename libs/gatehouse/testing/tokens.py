"""Real signed tokens for tests: a signing key, a verifier that trusts it, and minted tokens."""

from __future__ import annotations

from gatehouse.kit.auth import JwksCache, TokenVerifier
from gatehouse.kit.context import SERVICE_NAME_CLAIM
from gatehouse.kit.keys import generate_signing_key, issue_token, public_jwk

ISSUER = AUDIENCE = "gatehouse"


class TokenMint:
    """Issues real ES256 tokens; ``verifier`` verifies them exactly as services do."""

    def __init__(self):
        self.key = generate_signing_key()

        async def fetch() -> list[dict]:
            return [public_jwk(self.key)]

        self.verifier = TokenVerifier(JwksCache(fetch), issuer=ISSUER, audience=AUDIENCE).verify

    def user(self, user_id: str, amr=("pwd",), session_id: str = "s-test") -> str:
        return issue_token(
            self.key,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject=user_id,
            principal_type="user",
            session_id=session_id,
            amr=amr,
        )

    def service(self, name: str = "tenancy") -> str:
        return issue_token(
            self.key,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject=name,
            principal_type="service",
            extra={SERVICE_NAME_CLAIM: name},
        )

    @staticmethod
    def md(token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]
