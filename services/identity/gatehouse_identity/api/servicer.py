"""IdentityService over gRPC: take the principal, call one use case, convert the answer."""

from __future__ import annotations

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.identity.v1 import identity_service_pb2_grpc
from gatehouse.kit.context import current_client_info
from gatehouse.kit.interceptors import require_principal
from gatehouse.kit.pagination import decode_token, encode_token, page_size
from gatehouse_identity.api import convert
from gatehouse_identity.domain.service import IdentityService


def _page(items: list, size: int, key: str, attr: str = "id") -> tuple[list, str]:
    """Items of one page (fetched ``size + 1``) and the token of the next ('' at the end)."""
    if len(items) > size:
        items = items[:size]
        return items, encode_token({key: getattr(items[-1], attr)})
    return items, ""


def _position(token: str, key: str) -> str:
    position = decode_token(token)
    return str(position.get(key, "")) if position else ""


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    def __init__(self, service: IdentityService):
        self.svc = service

    # ---- users ---------------------------------------------------------------------
    async def CreateUser(self, request, context):
        user = await self.svc.create_user(
            require_principal(), request.email, request.display_name, request.password, request.request_id
        )
        return pb.CreateUserResponse(user=convert.user(user))

    async def GetUser(self, request, context):
        return pb.GetUserResponse(
            user=convert.user(await self.svc.get_user(require_principal(), request.user_id))
        )

    async def BatchGetUsers(self, request, context):
        users = await self.svc.batch_get_users(require_principal(), list(request.user_ids))
        return pb.BatchGetUsersResponse(users=[convert.user(u) for u in users])

    async def LookupUserByEmail(self, request, context):
        user = await self.svc.lookup_user_by_email(require_principal(), request.email)
        return pb.LookupUserByEmailResponse(user=convert.user(user))

    async def ListUsers(self, request, context):
        size = page_size(request.page_size)
        users = await self.svc.list_users(
            require_principal(), _position(request.page_token, "after"), size + 1, request.filter
        )
        users, next_token = _page(users, size, "after")
        return pb.ListUsersResponse(users=[convert.user(u) for u in users], next_page_token=next_token)

    async def UpdateUser(self, request, context):
        user = await self.svc.update_user(
            require_principal(),
            request.user.id,
            list(request.update_mask.paths),
            display_name=request.user.display_name,
            email=request.user.email,
            etag=request.user.etag,
            request_id=request.request_id,
        )
        return pb.UpdateUserResponse(user=convert.user(user))

    async def DisableUser(self, request, context):
        user = await self.svc.set_user_state(require_principal(), request.user_id, disabled=True)
        return pb.DisableUserResponse(user=convert.user(user))

    async def EnableUser(self, request, context):
        user = await self.svc.set_user_state(require_principal(), request.user_id, disabled=False)
        return pb.EnableUserResponse(user=convert.user(user))

    # ---- login and sessions ------------------------------------------------------------
    async def Login(self, request, context):
        result = await self.svc.login(
            request.email, request.password, request.totp_code, current_client_info()
        )
        return pb.LoginResponse(
            access_token=result.access.token,
            access_token_expire_time=convert.ts(result.access.expire_at),
            refresh_token=result.refresh_token,
            session_id=result.session.id,
            user=convert.user(result.user),
        )

    async def RefreshSession(self, request, context):
        access, refresh, session = await self.svc.refresh(request.refresh_token)
        return pb.RefreshSessionResponse(
            access_token=access.token,
            access_token_expire_time=convert.ts(access.expire_at),
            refresh_token=refresh,
            session_id=session.id,
        )

    async def Logout(self, request, context):
        await self.svc.logout(request.refresh_token)
        return pb.LogoutResponse()

    async def ListSessions(self, request, context):
        size = page_size(request.page_size)
        sessions = await self.svc.list_sessions(
            require_principal(),
            request.user_id,
            _position(request.page_token, "before"),
            size + 1,
            request.show_revoked,
        )
        sessions, next_token = _page(sessions, size, "before")
        return pb.ListSessionsResponse(
            sessions=[convert.session(s) for s in sessions], next_page_token=next_token
        )

    async def RevokeSession(self, request, context):
        session = await self.svc.revoke_session(require_principal(), request.session_id)
        return pb.RevokeSessionResponse(session=convert.session(session))

    async def ListRevocations(self, request, context):
        size = page_size(request.page_size, default=500, maximum=5000)
        found = await self.svc.list_revocations(require_principal(), request.after_sequence, size)
        last = found[-1].sequence if found else request.after_sequence
        return pb.ListRevocationsResponse(
            revocations=[convert.revocation(r) for r in found], last_sequence=last
        )

    async def WatchRevocations(self, request, context):
        async for batch in self.svc.watch_revocations(require_principal(), request.after_sequence):
            yield pb.WatchRevocationsResponse(revocations=[convert.revocation(r) for r in batch])

    # ---- keys -------------------------------------------------------------------------
    async def GetJwks(self, request, context):
        return pb.GetJwksResponse(keys=[convert.jwk(k) for k in await self.svc.jwks()])

    async def RotateSigningKey(self, request, context):
        jwk = await self.svc.rotate_signing_key(require_principal(), request.request_id)
        return pb.RotateSigningKeyResponse(key=convert.jwk(jwk))

    # ---- TOTP ------------------------------------------------------------------------
    async def BeginTotpEnrollment(self, request, context):
        enrollment = await self.svc.begin_totp(require_principal())
        return pb.BeginTotpEnrollmentResponse(secret=enrollment.secret, otpauth_uri=enrollment.uri)

    async def ConfirmTotpEnrollment(self, request, context):
        codes = await self.svc.confirm_totp(require_principal(), request.code)
        return pb.ConfirmTotpEnrollmentResponse(recovery_codes=codes)

    async def DisableTotp(self, request, context):
        await self.svc.disable_totp(require_principal(), request.password, request.code)
        return pb.DisableTotpResponse()

    # ---- passwords ------------------------------------------------------------------------
    async def ChangePassword(self, request, context):
        await self.svc.change_password(require_principal(), request.current_password, request.new_password)
        return pb.ChangePasswordResponse()

    async def CreatePasswordResetToken(self, request, context):
        token, expire_at = await self.svc.create_reset_token(require_principal(), request.user_id)
        return pb.CreatePasswordResetTokenResponse(token=token, expire_time=convert.ts(expire_at))

    async def ResetPassword(self, request, context):
        await self.svc.reset_password(request.token, request.new_password)
        return pb.ResetPasswordResponse()

    # ---- service accounts --------------------------------------------------------------
    async def CreateServiceAccount(self, request, context):
        created = await self.svc.create_service_account(require_principal(), request.name, request.request_id)
        return pb.CreateServiceAccountResponse(
            service_account=convert.service_account(created.account), client_secret=created.secret
        )

    async def IssueServiceToken(self, request, context):
        issued = await self.svc.issue_service_token(request.client_id, request.client_secret)
        return pb.IssueServiceTokenResponse(
            access_token=issued.token, access_token_expire_time=convert.ts(issued.expire_at)
        )

    async def ListServiceAccounts(self, request, context):
        size = page_size(request.page_size)
        accounts = await self.svc.list_service_accounts(
            require_principal(), _position(request.page_token, "after"), size + 1
        )
        accounts, next_token = _page(accounts, size, "after")
        return pb.ListServiceAccountsResponse(
            service_accounts=[convert.service_account(a) for a in accounts], next_page_token=next_token
        )

    async def DeleteServiceAccount(self, request, context):
        await self.svc.delete_service_account(require_principal(), request.service_account_id)
        return pb.DeleteServiceAccountResponse()
