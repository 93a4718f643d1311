"""Identity's use cases: one method per operation, each one transaction.

The servicer (api/) calls these with the verified principal; they validate,
apply the caller rules, change state through the store, write the audit event
(and any message for authz) in the same transaction, and return entities.
Platform-admin status is never read from identity's rows: :class:`Access`
asks authz (and fails closed when it cannot).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from gatehouse.kit import errors
from gatehouse.kit.context import SERVICE_NAME_CLAIM, ClientInfo, Principal
from gatehouse.kit.errors import ErrorCollector
from gatehouse.kit.ids import new_id
from gatehouse.kit.keys import public_jwk
from gatehouse_identity.config import IdentityConfig
from gatehouse_identity.domain import credentials as cred
from gatehouse_identity.domain import model as m
from gatehouse_identity.domain.passwords import MAX_LENGTH, Hasher, check_policy

INVALID_LOGIN = "invalid email or password"
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SERVICE_ACCOUNT_NAME = re.compile(r"^[a-z0-9-]{1,63}$")
USER_FIELDS = ("display_name", "email")
AUTHZ_TOPIC = "authz"


class Access(Protocol):
    """Whether a principal is a platform admin (asks authz; raises ``Unavailable`` when it cannot)."""

    async def is_platform_admin(self, principal: Principal) -> bool: ...


# Builds the serialized authz WriteRelationships request that marks a user disabled / enabled.
SubjectStateMessage = Callable[[str, bool], bytes]


@dataclass(frozen=True)
class TotpEnrollment:
    secret: str
    uri: str


@dataclass(frozen=True)
class CreatedServiceAccount:
    account: m.ServiceAccount
    secret: str


def _not_found_user(user_id: str) -> errors.NotFound:
    return errors.NotFound("user", user_id)


def _require_user(principal: Principal) -> Principal:
    if principal.is_service:
        raise errors.PermissionDenied("only users may call this method", reason="CAPABILITY_DENIED")
    return principal


def _require_service(principal: Principal) -> Principal:
    if not principal.is_service:
        raise errors.PermissionDenied(
            "only service accounts may call this method", reason="SERVICE_ACCOUNT_REQUIRED"
        )
    return principal


def _validate_email(email: str, errs: ErrorCollector, field: str = "email") -> str:
    normalized = m.normalize_email(email)
    if not normalized:
        errs.add(field, "is required")
    elif len(normalized) > 320 or not EMAIL_RE.match(normalized):
        errs.add(field, "is not a valid email address")
    return normalized


def _validate_display_name(name: str, errs: ErrorCollector, field: str = "display_name") -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        errs.add(field, "must be 1 to 200 characters")
    return name


class IdentityService:
    def __init__(
        self,
        store,
        keyring,
        box,
        access: Access,
        config: IdentityConfig,
        *,
        subject_state_message: SubjectStateMessage,
        on_outbox: Callable[[], None] = lambda: None,
    ):
        self.store = store
        self.keys = keyring
        self.box = box
        self.access = access
        self.config = config
        self.hasher = Hasher(
            time_cost=config.argon2_time_cost,
            memory_kib=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._subject_state_message = subject_state_message
        self._on_outbox = on_outbox

    # ---- shared steps ------------------------------------------------------------
    @property
    def _publish_for(self) -> float:
        """How long a revocation must be published: the longest token lifetime plus leeway."""
        return max(self.config.access_token_ttl, self.config.service_token_ttl) + self.config.token_leeway

    async def _is_admin(self, principal: Principal) -> bool:
        return not principal.is_service and await self.access.is_platform_admin(principal)

    async def _denied(self, principal: Principal, operation: str, reason: str, target=None) -> None:
        """Every denial is an audit event (its own transaction: the denied change never happens)."""
        async with self.store.transaction() as tx:
            await tx.audit(
                "identity.access.denied",
                actor=principal,
                outcome="DENIED",
                reason=reason,
                target=target,
                details={"operation": operation},
            )
            await tx.commit()

    async def _require_admin(
        self, principal: Principal, operation: str, *, services_too: bool = False
    ) -> None:
        if services_too and principal.is_service:
            return
        if not await self._is_admin(principal):
            await self._denied(principal, operation, "platform admins only")
            raise errors.PermissionDenied(
                "platform admins only",
                capability="platform:manage_users",
                resource="platform:platform",
            )

    async def _visible_user(self, tx, principal: Principal, user_id: str) -> m.User:
        """The user if the caller may see them (self, service, platform admin); NOT_FOUND otherwise."""
        if not user_id:
            raise errors.InvalidArgument.field("user_id", "is required")
        allowed = principal.is_service or principal.id == user_id or await self._is_admin(principal)
        user = await tx.get_user(user_id) if allowed else None
        if user is None:
            if not allowed:
                await self._denied(
                    principal, "read user", "not self and not a platform admin", ("user", user_id)
                )
            raise _not_found_user(user_id)
        return user

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, stored_hash: str | None, password: str) -> bool:
        if stored_hash is None:
            await asyncio.to_thread(self.hasher.verify_dummy, password)
            return False
        return await asyncio.to_thread(self.hasher.verify, stored_hash, password)

    async def _revoke_all(self, tx, user_id: str, reason: str, *, keep: str | None = None) -> list[str]:
        now = time.time()
        revoked = []
        for s in await tx.live_sessions_of(user_id, now):
            if s.id != keep and await tx.revoke_session(s, reason, now, self._publish_for):
                revoked.append(s.id)
        return revoked

    async def _idempotent(
        self, tx, principal: Principal | None, method: str, request_id: str
    ) -> tuple[str, dict | None]:
        if not request_id:
            return "", None
        who = principal.subject if principal else "anonymous"
        key = f"{method}:{who}:{request_id}"[:400]
        stored = await tx.get_idempotent(key)
        return key, (json.loads(stored) if stored is not None else None)

    # ---- users --------------------------------------------------------------------
    async def create_user(
        self, principal: Principal, email: str, display_name: str, password: str, request_id: str = ""
    ) -> m.User:
        await self._require_admin(principal, "CreateUser", services_too=True)
        errs = ErrorCollector()
        email = _validate_email(email, errs)
        display_name = _validate_display_name(display_name, errs)
        check_policy(password, email, errs)
        errs.raise_if_any()
        async with self.store.transaction() as tx:
            key, previous = await self._idempotent(tx, principal, "CreateUser", request_id)
            if previous is not None:
                user = await tx.get_user(previous["user_id"])
                if user is not None:
                    return user
            if await tx.get_user_by_email(email) is not None:
                raise errors.AlreadyExists(f"a user with email {email!r} already exists")
        password_hash = await self._hash(password)
        now = time.time()
        user = m.User(new_id(), email, display_name, m.ACTIVE, False, 1, now, now, password_hash)
        async with self.store.transaction() as tx:
            if await tx.get_user_by_email(email) is not None:
                raise errors.AlreadyExists(f"a user with email {email!r} already exists")
            await tx.insert_user(user)
            if key:
                await tx.put_idempotent(key, json.dumps({"user_id": user.id}).encode())
            await tx.audit("identity.user.created", target=("user", user.id), details={"email": email})
            await tx.commit()
        return user

    async def get_user(self, principal: Principal, user_id: str) -> m.User:
        async with self.store.transaction() as tx:
            return await self._visible_user(tx, principal, user_id)

    async def batch_get_users(self, principal: Principal, user_ids: list[str]) -> list[m.User]:
        _require_service(principal)
        if len(user_ids) > 1000:
            raise errors.InvalidArgument.field("user_ids", "at most 1,000 ids")
        async with self.store.transaction() as tx:
            found = await tx.get_users(sorted(set(user_ids)))
        return [found[i] for i in user_ids if i in found]

    async def lookup_user_by_email(self, principal: Principal, email: str) -> m.User:
        _require_service(principal)
        normalized = m.normalize_email(email)
        if not normalized:
            raise errors.InvalidArgument.field("email", "is required")
        async with self.store.transaction() as tx:
            user = await tx.get_user_by_email(normalized)
        if user is None:
            raise errors.NotFound("user")
        return user

    async def list_users(
        self, principal: Principal, after: str, limit: int, filter_text: str
    ) -> list[m.User]:
        await self._require_admin(principal, "ListUsers")
        email_prefix = state = ""
        text = filter_text.strip()
        if text:
            field, _, value = text.partition(":")
            if field == "email" and value:
                email_prefix = m.normalize_email(value)
            elif field == "state" and value in (m.ACTIVE, m.DISABLED):
                state = value
            else:
                raise errors.InvalidArgument.field(
                    "filter", "must be email:<prefix>, state:ACTIVE or state:DISABLED"
                )
        async with self.store.transaction() as tx:
            return await tx.list_users(after, limit, email_prefix, state)

    async def update_user(
        self,
        principal: Principal,
        user_id: str,
        paths: list[str],
        *,
        display_name: str = "",
        email: str = "",
        etag: str = "",
        request_id: str = "",
    ) -> m.User:
        errs = ErrorCollector()
        if not paths:
            errs.add("update_mask", "must name at least one field")
        for path in paths:
            if path not in USER_FIELDS:
                errs.add("update_mask", f"{path!r} cannot be updated (only display_name, email)")
        values = {}
        if "display_name" in paths:
            values["display_name"] = _validate_display_name(display_name, errs, "user.display_name")
        if "email" in paths:
            values["email"] = _validate_email(email, errs, "user.email")
        errs.raise_if_any()
        async with self.store.transaction() as tx:
            user = await self._visible_user(tx, principal, user_id)
            key, previous = await self._idempotent(tx, principal, "UpdateUser", request_id)
            if previous is not None:
                return user  # a retry of an update that was applied: its result, not an etag error
            if "email" in values and not await self._is_admin(principal):
                await self._denied(
                    principal, "UpdateUser", "only platform admins change emails", ("user", user_id)
                )
                raise errors.PermissionDenied(
                    "only platform admins may change an email",
                    capability="platform:manage_users",
                    resource="platform:platform",
                )
            if etag and etag != user.etag:
                raise errors.Aborted("the user changed since it was read", reason="ETAG_MISMATCH")
            if values.get("email", user.email) != user.email and await tx.get_user_by_email(values["email"]):
                raise errors.AlreadyExists(f"a user with email {values['email']!r} already exists")
            if not await tx.update_user(user.id, expected_version=user.version, **values):
                raise errors.Aborted("the user changed concurrently", reason="ETAG_MISMATCH")
            if key:
                await tx.put_idempotent(key, json.dumps({"user_id": user.id}).encode())
            await tx.audit(
                "identity.user.updated", target=("user", user.id), details={"fields": sorted(values)}
            )
            await tx.commit()
            return await tx.get_user(user.id)

    async def set_user_state(self, principal: Principal, user_id: str, disabled: bool) -> m.User:
        """DisableUser / EnableUser: sessions revoked, authz told through the outbox, in one transaction."""
        await self._require_admin(principal, "DisableUser/EnableUser")
        state = m.DISABLED if disabled else m.ACTIVE
        async with self.store.transaction() as tx:
            user = await tx.get_user(user_id)
            if user is None:
                raise _not_found_user(user_id)
            if user.state != state:
                await tx.update_user(user.id, state=state)
                revoked = await self._revoke_all(tx, user.id, m.USER_DISABLED) if disabled else []
                await tx.outbox(AUTHZ_TOPIC, self._subject_state_message(user.id, disabled))
                await tx.audit(
                    "identity.user.disabled" if disabled else "identity.user.enabled",
                    target=("user", user.id),
                    details={"revoked_sessions": len(revoked)},
                )
                await tx.commit()
                self._on_outbox()
            return await tx.get_user(user.id)

    # ---- login and sessions -------------------------------------------------------
    async def _second_factor(self, tx, user: m.User, code: str) -> bool:
        """Check a TOTP code (each time step once) or a recovery code (each once)."""
        row = await tx.get_totp(user.id)
        if row is None or not row.confirmed:
            return False
        if cred.looks_like_totp(code):
            step = cred.totp_step(self.box.open(row.secret_encrypted), code)
            return step is not None and await tx.use_totp_step(user.id, step)
        normalized = cred.normalize_recovery_code(code)
        return await tx.use_recovery_code(user.id, self.box.mac(normalized), time.time())

    async def _login_failed(
        self,
        email: str,
        user: m.User | None,
        why: str,
        reason: str,
        action: str = "identity.login.failed",
        counted: int | None = None,
    ) -> errors.GatehouseError:
        """Count the failure (maybe locking the email), audit it, and build the error to raise.
        ``counted``: the attempt was counted already (sign-in counts before checking), as that many."""
        now = time.time()
        email_hash = self.box.mac(email)
        actor_target = ("user", user.id) if user else None
        async with self.store.transaction() as tx:
            if counted is None:
                locked_until = await tx.record_failure(
                    email_hash,
                    now,
                    window=self.config.lockout_window,
                    threshold=self.config.lockout_threshold,
                    duration=self.config.lockout_duration,
                )
            elif counted >= self.config.lockout_threshold:
                locked_until = now + self.config.lockout_duration
                await tx.lock_login(email_hash, locked_until)
            else:
                locked_until = None
            await tx.audit(
                action,
                outcome="DENIED",
                reason=why,
                target=actor_target,
                details={"email": email[:320]},
            )
            if locked_until is not None:
                await tx.audit(
                    "identity.login.locked",
                    outcome="DENIED",
                    reason="too many failed attempts",
                    target=actor_target,
                    details={"email": email[:320], "locked_until": locked_until},
                )
            await tx.commit()
        if reason == "INVALID_SECOND_FACTOR":
            return errors.Unauthenticated("invalid second factor", reason=reason)
        return errors.Unauthenticated(INVALID_LOGIN, reason="INVALID_CREDENTIALS")

    async def _new_session(
        self, tx, user: m.User, amr: tuple[str, ...], client: ClientInfo
    ) -> tuple[m.Session, str]:
        now = time.time()
        session = m.Session(
            id=new_id(),
            user_id=user.id,
            amr=amr,
            created_at=now,
            expire_at=now + self.config.refresh_token_ttl,
            source_address=client.address,
            user_agent=client.user_agent,
        )
        await tx.insert_session(session)
        refresh = cred.new_token()
        await tx.insert_refresh_token(cred.digest(refresh), session.id, now)
        return session, refresh

    async def _access_token(self, user_id: str, session: m.Session) -> m.IssuedToken:
        return await self.keys.issue(
            subject=user_id,
            principal_type="user",
            ttl=self.config.access_token_ttl,
            session_id=session.id,
            amr=session.amr,
        )

    async def login(self, email: str, password: str, totp_code: str, client: ClientInfo) -> m.LoginResult:
        normalized = m.normalize_email(email)
        email_hash = self.box.mac(normalized)
        now = time.time()
        async with self.store.transaction() as tx:
            # The attempt is counted before its password is checked, in one statement: attempts
            # sent at once each see their own count (counted after the check, 40 parallel guesses
            # were all checked before the first failure was recorded).
            attempts, locked_until = await tx.count_attempt(
                email_hash, now, window=self.config.lockout_window
            )
            if locked_until is None and attempts > self.config.lockout_threshold:
                locked_until = now + self.config.lockout_duration
                await tx.lock_login(email_hash, locked_until)
            user = None
            if locked_until is None and normalized:
                user = await tx.get_user_by_email(normalized)
            await tx.commit()
        if locked_until is not None:
            async with self.store.transaction() as tx:
                await tx.audit(
                    "identity.login.failed",
                    outcome="DENIED",
                    reason="account locked",
                    details={"email": normalized[:320]},
                )
                await tx.commit()
            raise errors.ResourceExhausted(
                "too many failed login attempts; try again later",
                retry_after=locked_until - time.time(),
                reason="LOGIN_LOCKED",
            )
        # Always one argon2 verification: unknown email, wrong password and disabled account cost alike.
        # A password longer than any accepted one cannot match (and is not hashed at full length).
        too_long = len(password) > MAX_LENGTH
        ok = await self._verify(
            None if too_long or user is None else user.password_hash, password[:MAX_LENGTH]
        )
        if user is None or not ok or not user.active:
            why = "unknown email" if user is None else ("wrong password" if not ok else "account disabled")
            raise await self._login_failed(normalized, user, why, "INVALID_CREDENTIALS", counted=attempts)
        amr: tuple[str, ...] = ("pwd",)
        if user.mfa_enabled:
            if not totp_code.strip():
                raise errors.Unauthenticated("a second factor is required", reason="MFA_REQUIRED")
            async with self.store.transaction() as tx:
                second_ok = await self._second_factor(tx, user, totp_code)
                await tx.commit()  # a code or recovery code is spent even if a later step fails
            if not second_ok:
                raise await self._login_failed(
                    normalized, user, "invalid second factor", "INVALID_SECOND_FACTOR", counted=attempts
                )
            amr = ("pwd", "otp")
        async with self.store.transaction() as tx:
            # The password was checked outside any transaction (argon2 takes a while): a password
            # change, reset or disable that committed meanwhile could not revoke a session that did
            # not exist yet. Under the user's row lock, the session is made only for the password
            # and the state that were verified.
            current = await tx.get_user(user.id, lock=True)
            stale = current is None or not current.active or current.password_hash != user.password_hash
            if not stale:
                if self.hasher.needs_rehash(user.password_hash):
                    await tx.update_user(user.id, password_hash=await self._hash(password))
                await tx.clear_failures(email_hash)
                session, refresh = await self._new_session(tx, user, amr, client)
                await tx.audit(
                    "identity.login.succeeded",
                    actor=Principal(kind="user", id=user.id, session_id=session.id),
                    target=("user", user.id),
                    details={"session_id": session.id, "amr": list(amr)},
                )
                await tx.commit()
        if stale:
            raise await self._login_failed(
                normalized,
                user,
                "credentials changed during sign-in",
                "INVALID_CREDENTIALS",
                counted=attempts,
            )
        return m.LoginResult(await self._access_token(user.id, session), refresh, session, user)

    async def refresh(self, refresh_token: str) -> tuple[m.IssuedToken, str, m.Session]:
        invalid = errors.Unauthenticated("invalid refresh token", reason="TOKEN_INVALID")
        if not refresh_token:
            raise invalid
        token_hash = cred.digest(refresh_token)
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.get_refresh_token(token_hash)
            session = await tx.get_session(row.session_id) if row else None
            if row is None or session is None:
                raise invalid
            if row.used_at is not None or not await tx.use_refresh_token(token_hash, now):
                # A rotated token came back: someone holds a copy. End the whole session.
                await tx.revoke_session(session, m.REUSE, now, self._publish_for)
                await tx.audit(
                    "identity.session.refresh_token_reused",
                    actor=Principal(kind="user", id=session.user_id, session_id=session.id),
                    outcome="DENIED",
                    reason="an already rotated refresh token was presented; session revoked",
                    target=("session", session.id),
                )
                await tx.commit()
                raise errors.Unauthenticated(
                    "refresh token was already used; the session is revoked", reason="REFRESH_TOKEN_REUSED"
                )
            user = await tx.get_user(session.user_id)
            if not session.live(now) or user is None or not user.active:
                raise errors.Unauthenticated("the session is no longer valid", reason="SESSION_REVOKED")
            refresh = cred.new_token()
            await tx.insert_refresh_token(cred.digest(refresh), session.id, now)
            await tx.touch_session(session.id, now)
            await tx.audit(
                "identity.session.refreshed",
                actor=Principal(kind="user", id=session.user_id, session_id=session.id),
                target=("session", session.id),
            )
            await tx.commit()
        return await self._access_token(session.user_id, session), refresh, session

    async def logout(self, refresh_token: str) -> None:
        if not refresh_token:
            return
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.get_refresh_token(cred.digest(refresh_token))
            session = await tx.get_session(row.session_id) if row else None
            if session is None or not await tx.revoke_session(session, m.LOGOUT, now, self._publish_for):
                return
            await tx.audit(
                "identity.session.revoked",
                actor=Principal(kind="user", id=session.user_id, session_id=session.id),
                reason=m.LOGOUT,
                target=("session", session.id),
            )
            await tx.commit()

    async def list_sessions(
        self, principal: Principal, user_id: str, before: str, limit: int, show_revoked: bool
    ) -> list[m.Session]:
        user_id = user_id or _require_user(principal).id
        async with self.store.transaction() as tx:
            if principal.id != user_id or principal.is_service:
                if not await self._is_admin(principal):
                    await self._denied(principal, "ListSessions", "not own sessions", ("user", user_id))
                    raise _not_found_user(user_id)
                if await tx.get_user(user_id) is None:
                    raise _not_found_user(user_id)
            return await tx.list_sessions(user_id, before, limit, show_revoked=show_revoked, now=time.time())

    async def revoke_session(self, principal: Principal, session_id: str) -> m.Session:
        if not session_id:
            raise errors.InvalidArgument.field("session_id", "is required")
        now = time.time()
        async with self.store.transaction() as tx:
            session = await tx.get_session(session_id)
            own = session is not None and not principal.is_service and session.user_id == principal.id
            if session is None:
                raise errors.NotFound("session", session_id)
            if not (own or await self._is_admin(principal)):
                await self._denied(principal, "RevokeSession", "not own session", ("session", session_id))
                raise errors.NotFound("session", session_id)
            if await tx.revoke_session(session, m.REVOKED, now, self._publish_for):
                await tx.audit("identity.session.revoked", reason=m.REVOKED, target=("session", session.id))
                await tx.commit()
            return await tx.get_session(session_id)

    async def list_revocations(self, principal: Principal, after: int, limit: int) -> list[m.Revocation]:
        _require_service(principal)
        async with self.store.transaction() as tx:
            return await tx.list_revocations(after, limit, time.time())

    async def watch_revocations(
        self, principal: Principal, after: int, *, poll: float = 0.5
    ) -> AsyncIterator[list[m.Revocation]]:
        """The backlog, then new revocations as they commit (polled; works across replicas)."""
        _require_service(principal)
        while True:
            async with self.store.transaction() as tx:
                batch = await tx.list_revocations(after, 1000, time.time())
            if batch:
                after = batch[-1].sequence
                yield batch
                continue
            await asyncio.sleep(poll)

    # ---- keys -----------------------------------------------------------------------
    async def jwks(self) -> list[dict]:
        return await self.keys.jwks()

    async def rotate_signing_key(self, principal: Principal, request_id: str = "") -> dict:
        await self._require_admin(principal, "RotateSigningKey")
        async with self.store.transaction() as tx:
            key, previous = await self._idempotent(tx, principal, "RotateSigningKey", request_id)
            if previous is not None:
                return previous
            # Old keys keep signing during the activation delay, then their tokens live publish_for.
            retire_after = self.config.key_activation_delay + self._publish_for + self.config.key_retire_grace
            new = await self.keys.rotate(tx.session, retire_after)
            jwk = public_jwk(new)
            if key:
                await tx.put_idempotent(key, json.dumps(jwk).encode())
            await tx.audit("identity.signing_key.rotated", target=("signing_key", new.kid))
            await tx.commit()
        await self.keys.load()
        return jwk

    # ---- TOTP -----------------------------------------------------------------------
    async def begin_totp(self, principal: Principal) -> TotpEnrollment:
        _require_user(principal)
        async with self.store.transaction() as tx:
            user = await tx.get_user(principal.id)
            if user is None:
                raise _not_found_user(principal.id)
            row = await tx.get_totp(user.id)
            if row is not None and row.confirmed:
                raise errors.FailedPrecondition("TOTP is already enrolled", reason="TOTP_STATE")
            secret = cred.new_totp_secret()
            await tx.put_pending_totp(user.id, self.box.seal(secret), time.time())
            await tx.commit()
        return TotpEnrollment(secret, cred.totp_uri(secret, user.email))

    async def confirm_totp(self, principal: Principal, code: str) -> list[str]:
        _require_user(principal)
        async with self.store.transaction() as tx:
            row = await tx.get_totp(principal.id)
            if row is None or row.confirmed:
                raise errors.FailedPrecondition("no TOTP enrollment is pending", reason="TOTP_STATE")
            step = cred.totp_step(self.box.open(row.secret_encrypted), code)
            if step is None:
                raise errors.Unauthenticated("invalid TOTP code", reason="INVALID_SECOND_FACTOR")
            await tx.confirm_totp(principal.id, step)
            codes = cred.new_recovery_codes()
            await tx.replace_recovery_codes(principal.id, [self.box.mac(c) for c in codes])
            await tx.audit("identity.totp.enrolled", target=("user", principal.id))
            await tx.commit()
        return codes

    async def _reverify_password(self, user: m.User, password: str, operation: str, message: str) -> None:
        """Re-authentication inside a session shares the login throttle and lock, so a stolen
        access token cannot be used to guess the password."""
        async with self.store.transaction() as tx:
            locked_until = await tx.locked_until(self.box.mac(user.email), time.time())
        if locked_until is not None:
            raise errors.ResourceExhausted(
                "too many failed attempts; try again later",
                retry_after=locked_until - time.time(),
                reason="LOGIN_LOCKED",
            )
        if len(password) > MAX_LENGTH or not await self._verify(user.password_hash, password):
            await self._login_failed(
                user.email,
                user,
                f"wrong password ({operation})",
                "INVALID_CREDENTIALS",
                action="identity.password.verification_failed",
            )
            raise errors.Unauthenticated(message, reason="INVALID_CREDENTIALS")

    async def disable_totp(self, principal: Principal, password: str, code: str) -> None:
        _require_user(principal)
        async with self.store.transaction() as tx:
            user = await tx.get_user(principal.id)
            if user is None:
                raise _not_found_user(principal.id)
            if not user.mfa_enabled:
                raise errors.FailedPrecondition("TOTP is not enrolled", reason="TOTP_STATE")
        await self._reverify_password(user, password, "DisableTotp", "the password is wrong")
        async with self.store.transaction() as tx:
            if not await self._second_factor(tx, user, code):
                raise errors.Unauthenticated("invalid second factor", reason="INVALID_SECOND_FACTOR")
            await tx.delete_totp(user.id)
            await tx.audit("identity.totp.disabled", target=("user", user.id))
            await tx.commit()

    # ---- passwords ------------------------------------------------------------------
    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        _require_user(principal)
        async with self.store.transaction() as tx:
            user = await tx.get_user(principal.id)
        if user is None:
            raise _not_found_user(principal.id)
        errs = ErrorCollector()
        check_policy(new, user.email, errs, field="new_password")
        errs.raise_if_any()
        await self._reverify_password(user, current, "ChangePassword", "the current password is wrong")
        new_hash = await self._hash(new)
        async with self.store.transaction() as tx:
            await tx.update_user(user.id, password_hash=new_hash)
            revoked = await self._revoke_all(tx, user.id, m.PASSWORD_CHANGED, keep=principal.session_id)
            await tx.audit(
                "identity.password.changed",
                target=("user", user.id),
                details={"revoked_sessions": len(revoked)},
            )
            await tx.commit()

    async def create_reset_token(self, principal: Principal, user_id: str) -> tuple[str, float]:
        await self._require_admin(principal, "CreatePasswordResetToken")
        now = time.time()
        token = cred.new_token()
        expire_at = now + self.config.reset_token_ttl
        async with self.store.transaction() as tx:
            if await tx.get_user(user_id) is None:
                raise _not_found_user(user_id)
            await tx.insert_reset_token(cred.digest(token), user_id, now, expire_at)
            await tx.audit("identity.password.reset_token_created", target=("user", user_id))
            await tx.commit()
        return token, expire_at

    async def reset_password(self, token: str, new: str) -> None:
        invalid = errors.FailedPrecondition(
            "the reset token is unknown, used or expired", reason="RESET_TOKEN_INVALID"
        )
        token_hash = cred.digest(token or "")
        async with self.store.transaction() as tx:
            row = await tx.get_reset_token(token_hash) if token else None
            user = await tx.get_user(row.user_id) if row else None
        if row is None or user is None or row.used_at is not None or row.expire_at <= time.time():
            raise invalid
        errs = ErrorCollector()
        check_policy(new, user.email, errs, field="new_password")
        errs.raise_if_any()
        new_hash = await self._hash(new)
        async with self.store.transaction() as tx:
            if await tx.use_reset_token(token_hash, time.time()) is None:
                raise invalid
            await tx.update_user(user.id, password_hash=new_hash)
            revoked = await self._revoke_all(tx, user.id, m.PASSWORD_RESET)
            await tx.clear_failures(self.box.mac(user.email))
            await tx.audit(
                "identity.password.reset",
                actor=Principal(kind="user", id=user.id),
                target=("user", user.id),
                details={"revoked_sessions": len(revoked)},
            )
            await tx.commit()

    # ---- service accounts ------------------------------------------------------------
    def _new_account(self, name: str) -> tuple[m.ServiceAccount, str]:
        secret = cred.new_token()
        account = m.ServiceAccount(
            new_id(), name, f"gh-{name}-{cred.new_token(9)}", time.time(), cred.digest(secret)
        )
        return account, secret

    async def create_service_account(
        self, principal: Principal | None, name: str, request_id: str = ""
    ) -> CreatedServiceAccount:
        """Platform admins (``principal=None``: identity itself, for provisioning)."""
        if principal is not None:
            await self._require_admin(principal, "CreateServiceAccount")
        if not SERVICE_ACCOUNT_NAME.match(name or ""):
            raise errors.InvalidArgument.field("name", "must be 1-63 characters of [a-z0-9-]")
        async with self.store.transaction() as tx:
            key, previous = await self._idempotent(tx, principal, "CreateServiceAccount", request_id)
            if previous is not None:
                account = await tx.get_service_account(id=previous["id"])
                if account is not None:
                    return CreatedServiceAccount(account, self.box.open(previous["secret"].encode()))
            if await tx.get_service_account(name=name) is not None:
                raise errors.AlreadyExists(f"a service account named {name!r} already exists")
            account, secret = self._new_account(name)
            await tx.insert_service_account(account)
            if key:
                sealed = self.box.seal(secret).decode()
                await tx.put_idempotent(key, json.dumps({"id": account.id, "secret": sealed}).encode())
            await tx.audit(
                "identity.service_account.created",
                target=("service_account", account.id),
                details={"name": name},
            )
            await tx.commit()
        return CreatedServiceAccount(account, secret)

    async def ensure_service_account(
        self, name: str, client_id: str, secret: str
    ) -> CreatedServiceAccount | None:
        """Provisioning: None if the credentials still match the account ``name``; else new credentials."""
        async with self.store.transaction() as tx:
            account = await tx.get_service_account(name=name)
            if (
                account is not None
                and account.client_id == client_id
                and cred.same_digest(secret, account.secret_hash)
            ):
                return None
            if account is None:
                account, secret = self._new_account(name)
                await tx.insert_service_account(account)
                action = "identity.service_account.created"
            else:
                secret = cred.new_token()
                await tx.set_service_account_secret(account.id, cred.digest(secret))
                action = "identity.service_account.secret_rotated"
            await tx.audit(action, target=("service_account", account.id), details={"name": name})
            await tx.commit()
        return CreatedServiceAccount(account, secret)

    async def issue_service_token(self, client_id: str, secret: str) -> m.IssuedToken:
        async with self.store.transaction() as tx:
            account = await tx.get_service_account(client_id=client_id) if client_id else None
        if account is None or not cred.same_digest(secret or "", account.secret_hash):
            raise errors.Unauthenticated("invalid client credentials", reason="INVALID_CREDENTIALS")
        return await self.service_token(account)

    async def service_token(self, account: m.ServiceAccount) -> m.IssuedToken:
        """A service token; its ``sid`` is the account id, so deleting the account revokes its tokens,
        and it carries the account's name (audit accepts events only of the service that sends them)."""
        return await self.keys.issue(
            subject=account.id,
            principal_type="service",
            ttl=self.config.service_token_ttl,
            session_id=account.id,
            extra={SERVICE_NAME_CLAIM: account.name},
        )

    async def list_service_accounts(
        self, principal: Principal, after: str, limit: int
    ) -> list[m.ServiceAccount]:
        await self._require_admin(principal, "ListServiceAccounts")
        async with self.store.transaction() as tx:
            return await tx.list_service_accounts(after, limit)

    async def delete_service_account(self, principal: Principal, account_id: str) -> None:
        await self._require_admin(principal, "DeleteServiceAccount")
        now = time.time()
        async with self.store.transaction() as tx:
            account = await tx.get_service_account(id=account_id) if account_id else None
            if account is None:
                raise errors.NotFound("service account", account_id)
            await tx.delete_service_account(account.id)
            await tx.append_revocation(account.id, "", now, now + self._publish_for)
            await tx.audit(
                "identity.service_account.deleted",
                target=("service_account", account.id),
                details={"name": account.name},
            )
            await tx.commit()
