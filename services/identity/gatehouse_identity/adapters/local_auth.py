"""How identity authenticates itself, without calling itself over gRPC.

- Its own token verifier reads the keys from the :class:`Keyring` and the
  revocations straight from its database (a :class:`RevocationPoller` over
  the revocations table), with the same :class:`TokenVerifier` rules as every
  other service.
- Its service token (for calls to authz and audit) is minted locally with the
  current signing key for the provisioned ``identity`` service account, instead
  of an ``IssueServiceToken`` round trip to itself.
"""

from __future__ import annotations

import time

from gatehouse.kit.auth import JwksCache, RevocationPoller, TokenVerifier
from gatehouse.kit.service_auth import ServiceTokenSource
from gatehouse_identity.domain import model as m

IDENTITY_ACCOUNT = "identity"


def local_revocation_poller(store, *, interval: float) -> RevocationPoller:
    async def fetch(after: int) -> list[tuple[str, float, int]]:
        async with store.transaction() as tx:
            rows = await tx.list_revocations(after, 100_000, time.time())
        return [(r.session_id, r.expire_at, r.sequence) for r in rows]

    return RevocationPoller(fetch, interval=interval)


def local_verifier(keyring, poller: RevocationPoller, *, issuer: str, audience: str) -> TokenVerifier:
    return TokenVerifier(
        JwksCache(keyring.jwks, refresh_interval=5.0, min_refetch=1.0),
        issuer=issuer,
        audience=audience,
        is_revoked=poller.is_revoked,
    )


def local_service_tokens(get_service, store) -> ServiceTokenSource:
    """Identity's own service token, minted locally for its ``identity`` service account."""

    async def fetch() -> tuple[str, float]:
        service = get_service()
        async with store.transaction() as tx:
            account = await tx.get_service_account(name=IDENTITY_ACCOUNT)
        if account is None:
            created = await service.create_service_account(None, IDENTITY_ACCOUNT)
            account = created.account
        issued: m.IssuedToken = await service.service_token(account)
        return issued.token, issued.expire_at

    return ServiceTokenSource(fetch)
