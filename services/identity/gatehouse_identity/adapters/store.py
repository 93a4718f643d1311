"""Identity storage: one :class:`Tx` per unit of work, with the queries the use cases need.

Every method runs in the transaction of the unit of work; nothing is kept
unless the use case calls :meth:`Tx.commit`. State changes that must not race
(using a refresh token, a recovery code, a reset token, a TOTP time step) are
single conditional ``UPDATE`` statements whose row count says who won.
Revocation sequence numbers come from the ``identity_meta`` row, whose lock
serializes revoking transactions so sequences commit in order (a poller
reading "after N" never skips one).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from gatehouse.kit import audit_log, errors, outbox
from gatehouse.kit.db import Database
from gatehouse_identity.adapters.tables import (
    idempotency,
    login_throttle,
    meta,
    recovery_codes,
    refresh_tokens,
    reset_tokens,
    revocations,
    service_accounts,
    sessions,
    totp,
    users,
)
from gatehouse_identity.domain import model as m


def _user(row) -> m.User:
    return m.User(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        state=row.state,
        mfa_enabled=bool(row.mfa_enabled),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        password_hash=row.password_hash,
    )


def _session(row) -> m.Session:
    return m.Session(
        id=row.id,
        user_id=row.user_id,
        amr=tuple(a for a in row.amr.split(",") if a),
        created_at=row.created_at,
        expire_at=row.expire_at,
        last_refresh_at=row.last_refresh_at,
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
        source_address=row.source_address,
        user_agent=row.user_agent,
    )


def _account(row) -> m.ServiceAccount:
    return m.ServiceAccount(row.id, row.name, row.client_id, row.created_at, row.secret_hash)


class Tx:
    """The queries of one transaction."""

    def __init__(self, uow):
        self._uow = uow
        self.session = uow.session

    async def commit(self) -> None:
        await self._uow.commit()

    async def _one(self, query):
        return (await self.session.execute(query)).first()

    async def _changed(self, statement) -> bool:
        return ((await self.session.execute(statement)).rowcount or 0) > 0

    # ---- side effects -------------------------------------------------------
    async def audit(self, action: str, **fields: Any) -> str:
        return await audit_log.record(self.session, service=m.SERVICE, action=action, **fields)

    async def outbox(self, topic: str, payload: bytes) -> str:
        # Ordered keys: the authz relay delivers these strictly in order (a disable never lands
        # after the enable that followed it).
        return await outbox.add(self.session, topic, payload, key=outbox.ordered_key())

    async def get_idempotent(self, key: str) -> bytes | None:
        row = await self._one(sa.select(idempotency.c.result).where(idempotency.c.key == key))
        return row.result if row else None

    async def put_idempotent(self, key: str, result: bytes) -> None:
        await self.session.execute(
            idempotency.insert().values(key=key, result=result, created_at=time.time())
        )

    # ---- users -----------------------------------------------------------------
    async def get_user(self, user_id: str, *, lock: bool = False) -> m.User | None:
        """The user; with ``lock``, its row locked until the transaction ends (PostgreSQL; SQLite
        serializes writers)."""
        query = sa.select(users).where(users.c.id == user_id)
        row = await self._one(query.with_for_update() if lock else query)
        return _user(row) if row else None

    async def get_user_by_email(self, email: str) -> m.User | None:
        row = await self._one(sa.select(users).where(users.c.email == email))
        return _user(row) if row else None

    async def get_users(self, ids: Sequence[str]) -> dict[str, m.User]:
        if not ids:
            return {}
        rows = (await self.session.execute(sa.select(users).where(users.c.id.in_(list(ids))))).all()
        return {r.id: _user(r) for r in rows}

    async def _insert(self, statement, conflict: str) -> None:
        """An INSERT whose unique-key violation (a concurrent twin won) is ALREADY_EXISTS."""
        try:
            await self.session.execute(statement)
        except IntegrityError:
            raise errors.AlreadyExists(conflict) from None

    async def insert_user(self, user: m.User) -> None:
        await self._insert(
            users.insert().values(
                id=user.id,
                email=user.email,
                display_name=user.display_name,
                password_hash=user.password_hash,
                state=user.state,
                mfa_enabled=user.mfa_enabled,
                version=user.version,
                created_at=user.created_at,
                updated_at=user.updated_at,
            ),
            f"a user with email {user.email!r} already exists",
        )

    async def update_user(self, user_id: str, *, expected_version: int | None = None, **values) -> bool:
        """Change columns and bump the version; False if the row (at that version) is gone."""
        where = [users.c.id == user_id]
        if expected_version is not None:
            where.append(users.c.version == expected_version)
        return await self._changed(
            users.update().where(*where).values(**values, version=users.c.version + 1, updated_at=time.time())
        )

    async def list_users(
        self, after: str, limit: int, email_prefix: str = "", state: str = ""
    ) -> list[m.User]:
        query = sa.select(users).order_by(users.c.id).limit(limit)
        if after:
            query = query.where(users.c.id > after)
        if email_prefix:
            query = query.where(users.c.email.startswith(email_prefix, autoescape=True))
        if state:
            query = query.where(users.c.state == state)
        return [_user(r) for r in (await self.session.execute(query)).all()]

    # ---- sessions and refresh tokens ------------------------------------------
    async def insert_session(self, s: m.Session) -> None:
        await self.session.execute(
            sessions.insert().values(
                id=s.id,
                user_id=s.user_id,
                amr=",".join(s.amr),
                created_at=s.created_at,
                expire_at=s.expire_at,
                last_refresh_at=s.last_refresh_at,
                source_address=s.source_address,
                user_agent=s.user_agent,
            )
        )

    async def get_session(self, session_id: str) -> m.Session | None:
        row = await self._one(sa.select(sessions).where(sessions.c.id == session_id))
        return _session(row) if row else None

    async def list_sessions(
        self, user_id: str, before: str, limit: int, *, show_revoked: bool, now: float
    ) -> list[m.Session]:
        query = (
            sa.select(sessions)
            .where(sessions.c.user_id == user_id)
            .order_by(sessions.c.id.desc())
            .limit(limit)
        )
        if before:
            query = query.where(sessions.c.id < before)
        if not show_revoked:
            query = query.where(sessions.c.revoked_at.is_(None), sessions.c.expire_at > now)
        return [_session(r) for r in (await self.session.execute(query)).all()]

    async def touch_session(self, session_id: str, now: float) -> None:
        await self.session.execute(
            sessions.update().where(sessions.c.id == session_id).values(last_refresh_at=now)
        )

    async def revoke_session(self, s: m.Session, reason: str, now: float, publish_for: float) -> bool:
        """Revoke a live session and publish it; False if it was already revoked."""
        changed = await self._changed(
            sessions.update()
            .where(sessions.c.id == s.id, sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoke_reason=reason)
        )
        if changed:
            await self.append_revocation(s.id, s.user_id, now, now + publish_for)
        return changed

    async def live_sessions_of(self, user_id: str, now: float) -> list[m.Session]:
        rows = await self.session.execute(
            sa.select(sessions).where(
                sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None), sessions.c.expire_at > now
            )
        )
        return [_session(r) for r in rows.all()]

    async def insert_refresh_token(self, token_hash: str, session_id: str, now: float) -> None:
        await self.session.execute(
            refresh_tokens.insert().values(token_hash=token_hash, session_id=session_id, created_at=now)
        )

    async def get_refresh_token(self, token_hash: str):
        return await self._one(sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash))

    async def use_refresh_token(self, token_hash: str, now: float) -> bool:
        return await self._changed(
            refresh_tokens.update()
            .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used_at.is_(None))
            .values(used_at=now)
        )

    # ---- revocations -------------------------------------------------------------
    async def append_revocation(
        self, session_id: str, user_id: str, revoked_at: float, expire_at: float
    ) -> int:
        await self.session.execute(
            meta.update().where(meta.c.id == 1).values(revocation_sequence=meta.c.revocation_sequence + 1)
        )
        sequence = (
            await self.session.execute(sa.select(meta.c.revocation_sequence).where(meta.c.id == 1))
        ).scalar_one()
        await self.session.execute(
            revocations.insert().values(
                sequence=sequence,
                session_id=session_id,
                user_id=user_id,
                revoked_at=revoked_at,
                expire_at=expire_at,
            )
        )
        return sequence

    async def list_revocations(self, after: int, limit: int, now: float) -> list[m.Revocation]:
        rows = await self.session.execute(
            sa.select(revocations)
            .where(revocations.c.sequence > after, revocations.c.expire_at > now)
            .order_by(revocations.c.sequence)
            .limit(limit)
        )
        return [
            m.Revocation(r.sequence, r.session_id, r.user_id, r.revoked_at, r.expire_at) for r in rows.all()
        ]

    async def purge_expired(self, now: float, *, throttle_window: float, keep_for: float = 7 * 86400) -> int:
        """Delete rows that can no longer matter; returns how many went."""
        expired_sessions = sa.select(sessions.c.id).where(sessions.c.expire_at < now - 86400)
        statements = [
            revocations.delete().where(revocations.c.expire_at < now - 3600),
            login_throttle.delete().where(
                login_throttle.c.window_start < now - throttle_window,
                sa.or_(login_throttle.c.locked_until.is_(None), login_throttle.c.locked_until < now),
            ),
            reset_tokens.delete().where(reset_tokens.c.expire_at < now - 86400),
            idempotency.delete().where(idempotency.c.created_at < now - keep_for),
            refresh_tokens.delete().where(refresh_tokens.c.session_id.in_(expired_sessions)),
        ]
        removed = 0
        for statement in statements:
            removed += (await self.session.execute(statement)).rowcount or 0
        return removed

    # ---- login throttle ----------------------------------------------------------
    async def locked_until(self, email_hash: str, now: float) -> float | None:
        row = await self._one(sa.select(login_throttle).where(login_throttle.c.email_hash == email_hash))
        if row and row.locked_until and row.locked_until > now:
            return row.locked_until
        return None

    async def count_attempt(self, email_hash: str, now: float, *, window: float) -> tuple[int, float | None]:
        """Count one attempt in one statement (an upsert), so concurrent attempts each get their own
        count; returns (attempts in the current window, this one included; the lock expiry held
        before it, if any). A window that ended, or a lock that expired, starts a new count."""
        c = login_throttle.c
        insert = (postgresql.insert if self.session.bind.dialect.name == "postgresql" else sqlite.insert)(
            login_throttle
        )
        fresh = sa.or_(
            c.window_start < now - window, sa.and_(c.locked_until.is_not(None), c.locked_until <= now)
        )
        statement = (
            insert.values(email_hash=email_hash, failures=1, window_start=now)
            .on_conflict_do_update(
                index_elements=[c.email_hash],
                set_={
                    "failures": sa.case((fresh, 1), else_=c.failures + 1),
                    "window_start": sa.case((fresh, now), else_=c.window_start),
                    "locked_until": sa.case((fresh, None), else_=c.locked_until),
                },
            )
            .returning(c.failures, c.locked_until)
        )
        row = (await self.session.execute(statement)).one()
        return row.failures, row.locked_until

    async def lock_login(self, email_hash: str, until: float) -> None:
        await self.session.execute(
            login_throttle.update()
            .where(login_throttle.c.email_hash == email_hash)
            .values(locked_until=until)
        )

    async def record_failure(
        self, email_hash: str, now: float, *, window: float, threshold: int, duration: float
    ) -> float | None:
        """Count a failed attempt; returns the lock expiry when this failure locked the account."""
        failures, _ = await self.count_attempt(email_hash, now, window=window)
        if failures >= threshold:
            await self.lock_login(email_hash, now + duration)
            return now + duration
        return None

    async def clear_failures(self, email_hash: str) -> None:
        await self.session.execute(login_throttle.delete().where(login_throttle.c.email_hash == email_hash))

    # ---- TOTP and recovery codes -------------------------------------------------
    async def get_totp(self, user_id: str):
        return await self._one(sa.select(totp).where(totp.c.user_id == user_id))

    async def put_pending_totp(self, user_id: str, secret_encrypted: bytes, now: float) -> None:
        await self.session.execute(totp.delete().where(totp.c.user_id == user_id))
        await self.session.execute(
            totp.insert().values(
                user_id=user_id,
                secret_encrypted=secret_encrypted,
                confirmed=False,
                last_used_step=0,
                created_at=now,
            )
        )

    async def confirm_totp(self, user_id: str, step: int) -> None:
        await self.session.execute(
            totp.update().where(totp.c.user_id == user_id).values(confirmed=True, last_used_step=step)
        )
        await self.session.execute(users.update().where(users.c.id == user_id).values(mfa_enabled=True))

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        """Accept a time step only if it is newer than the last one used (no replay)."""
        return await self._changed(
            totp.update()
            .where(totp.c.user_id == user_id, totp.c.last_used_step < step)
            .values(last_used_step=step)
        )

    async def delete_totp(self, user_id: str) -> None:
        await self.session.execute(totp.delete().where(totp.c.user_id == user_id))
        await self.session.execute(recovery_codes.delete().where(recovery_codes.c.user_id == user_id))
        await self.session.execute(users.update().where(users.c.id == user_id).values(mfa_enabled=False))

    async def replace_recovery_codes(self, user_id: str, hashes: Sequence[str]) -> None:
        await self.session.execute(recovery_codes.delete().where(recovery_codes.c.user_id == user_id))
        await self.session.execute(
            recovery_codes.insert(), [{"code_hash": h, "user_id": user_id} for h in hashes]
        )

    async def use_recovery_code(self, user_id: str, code_hash: str, now: float) -> bool:
        return await self._changed(
            recovery_codes.update()
            .where(
                recovery_codes.c.code_hash == code_hash,
                recovery_codes.c.user_id == user_id,
                recovery_codes.c.used_at.is_(None),
            )
            .values(used_at=now)
        )

    # ---- password reset tokens --------------------------------------------------
    async def insert_reset_token(self, token_hash: str, user_id: str, now: float, expire_at: float) -> None:
        await self.session.execute(
            reset_tokens.insert().values(
                token_hash=token_hash, user_id=user_id, created_at=now, expire_at=expire_at
            )
        )

    async def get_reset_token(self, token_hash: str):
        return await self._one(sa.select(reset_tokens).where(reset_tokens.c.token_hash == token_hash))

    async def use_reset_token(self, token_hash: str, now: float) -> str | None:
        row = await self.get_reset_token(token_hash)
        if row is None or row.used_at is not None or row.expire_at <= now:
            return None
        won = await self._changed(
            reset_tokens.update()
            .where(reset_tokens.c.token_hash == token_hash, reset_tokens.c.used_at.is_(None))
            .values(used_at=now)
        )
        return row.user_id if won else None

    # ---- service accounts ----------------------------------------------------------
    async def insert_service_account(self, a: m.ServiceAccount) -> None:
        await self._insert(
            service_accounts.insert().values(
                id=a.id,
                name=a.name,
                client_id=a.client_id,
                secret_hash=a.secret_hash,
                created_at=a.created_at,
            ),
            f"a service account named {a.name!r} already exists",
        )

    async def get_service_account(self, *, id: str = "", name: str = "", client_id: str = ""):
        c = service_accounts.c
        cond = c.id == id if id else (c.name == name if name else c.client_id == client_id)
        row = await self._one(sa.select(service_accounts).where(cond))
        return _account(row) if row else None

    async def set_service_account_secret(self, account_id: str, secret_hash: str) -> None:
        await self.session.execute(
            service_accounts.update()
            .where(service_accounts.c.id == account_id)
            .values(secret_hash=secret_hash)
        )

    async def list_service_accounts(self, after: str, limit: int) -> list[m.ServiceAccount]:
        query = sa.select(service_accounts).order_by(service_accounts.c.id).limit(limit)
        if after:
            query = query.where(service_accounts.c.id > after)
        return [_account(r) for r in (await self.session.execute(query)).all()]

    async def delete_service_account(self, account_id: str) -> bool:
        return await self._changed(service_accounts.delete().where(service_accounts.c.id == account_id))


class Store:
    def __init__(self, db: Database):
        self.db = db

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.unit_of_work() as uow:
            yield Tx(uow)
