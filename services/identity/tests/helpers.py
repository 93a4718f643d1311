"""Small helpers shared by identity's tests (bounded waits, error details, tokens)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc
from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.status import error_info
from gatehouse.type.v1 import refs_pb2


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def fails(coro, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    """Await ``coro``, which must fail with ``code`` (and ErrorInfo ``reason``); returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, (info.value.code(), info.value.details())
    if reason is not None:
        detail = error_info(info.value)
        assert detail is not None and detail.reason == reason, detail
    return info.value


async def eventually(check, *, timeout: float = 5.0, interval: float = 0.1):
    """Call async ``check`` until it returns a truthy value (bounded by ``timeout``); returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def admin_token(identity) -> tuple[str, str]:
    """A platform admin (through real authz): ``(user_id, access_token)``."""
    user_id, token = await identity.user_token()
    await identity.make_platform_admin(user_id)
    return user_id, token


def authz_stub(identity):
    return authz_service_pb2_grpc.AuthzServiceStub(grpc.aio.insecure_channel(identity.authz_address))


async def authz_self_check(identity, token: str, user_id: str):
    """CheckCapability by the user about themselves at authz (a second service verifying the token)."""
    stub = authz_stub(identity)
    return await stub.CheckCapability(
        authz_service_pb2.CheckCapabilityRequest(
            subject=refs_pb2.SubjectRef(type="user", id=user_id),
            resource=refs_pb2.ResourceRef(type="platform", id="platform"),
            capability="platform:manage_users",
        ),
        metadata=md(token),
        timeout=5,
    )


async def refused_by_authz(identity, token: str, user_id: str) -> bool:
    try:
        await authz_self_check(identity, token, user_id)
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


async def get_self(identity, token: str, user_id: str):
    return await identity.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(token))


async def all_pages(rpc, make_request, items: str, metadata, *, max_pages: int = 10) -> list:
    """Every item of a paginated List RPC, following next_page_token (bounded)."""
    out, token = [], ""
    for _ in range(max_pages):
        page = await rpc(make_request(token), metadata=metadata)
        out += list(getattr(page, items))
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError(f"more than {max_pages} pages")
