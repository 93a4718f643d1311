"""The Gatehouse client library for Python backends and tools (see docs/client.md).

- :class:`GatehouseClient` — typed stubs of every service with token handling,
  deadlines, retries of idempotent calls, and trace propagation;
- :class:`AuthzClient` — checks with a per-revision decision cache, failing closed;
- :class:`Guard` — protect your own gRPC server's RPCs with a capability per RPC.
"""

from gatehouse.client.authz import Access, AuthzClient, AuthzUnavailable, DecisionCache
from gatehouse.client.client import GatehouseClient
from gatehouse.client.credentials import ServiceAccountCredentials, SessionCredentials, StaticToken
from gatehouse.client.guard import Guard, IdentityVerifier, Rule, from_field, identity_verifier, requires
from gatehouse.client.retry import RetryPolicy, is_idempotent
from gatehouse.kit.authz_guard import Decision

__all__ = [
    "Access",
    "AuthzClient",
    "AuthzUnavailable",
    "Decision",
    "DecisionCache",
    "GatehouseClient",
    "Guard",
    "IdentityVerifier",
    "RetryPolicy",
    "Rule",
    "ServiceAccountCredentials",
    "SessionCredentials",
    "StaticToken",
    "from_field",
    "identity_verifier",
    "is_idempotent",
    "requires",
]
