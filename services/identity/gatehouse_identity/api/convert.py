"""Domain entities ⇄ protobuf messages (kept apart from the handlers)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from gatehouse.identity.v1 import user_pb2
from gatehouse_identity.domain import model as m

STATES = {m.ACTIVE: user_pb2.USER_STATE_ACTIVE, m.DISABLED: user_pb2.USER_STATE_DISABLED}


def ts(epoch: float | None) -> timestamp_pb2.Timestamp | None:
    if epoch is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(epoch * 1e9))
    return out


def user(u: m.User) -> user_pb2.User:
    return user_pb2.User(
        id=u.id,
        email=u.email,
        display_name=u.display_name,
        state=STATES[u.state],
        mfa_enabled=u.mfa_enabled,
        create_time=ts(u.created_at),
        update_time=ts(u.updated_at),
        etag=u.etag,
    )


def session(s: m.Session) -> user_pb2.Session:
    return user_pb2.Session(
        id=s.id,
        user_id=s.user_id,
        amr=list(s.amr),
        create_time=ts(s.created_at),
        last_refresh_time=ts(s.last_refresh_at),
        expire_time=ts(s.expire_at),
        revoke_time=ts(s.revoked_at),
        source_address=s.source_address,
        user_agent=s.user_agent,
    )


def service_account(a: m.ServiceAccount) -> user_pb2.ServiceAccount:
    return user_pb2.ServiceAccount(id=a.id, name=a.name, client_id=a.client_id, create_time=ts(a.created_at))


def revocation(r: m.Revocation) -> user_pb2.Revocation:
    return user_pb2.Revocation(
        session_id=r.session_id,
        user_id=r.user_id,
        revoke_time=ts(r.revoked_at),
        expire_time=ts(r.expire_at),
        sequence=r.sequence,
    )


def jwk(d: dict) -> user_pb2.Jwk:
    return user_pb2.Jwk(**{k: d.get(k, "") for k in ("kid", "kty", "crv", "alg", "use", "x", "y")})
