"""The server guard on a real grpc.aio server, deciding through a real authz (tokens from TokenMint).

The guarded service is a raw bytes-in/bytes-out probe (the request is the
workspace id), so the test needs no proto of its own.
"""

from __future__ import annotations

import grpc
import pytest

from gatehouse.client import AuthzClient, Guard, StaticToken, requires
from gatehouse.client.testing import active, start_authz, touch
from gatehouse.kit.context import current_principal
from gatehouse.kit.status import error_info
from gatehouse.testing.tokens import TokenMint

SERVICE = "gatehouse.test.v1.Probe"
IN_WORKSPACE = lambda req: ("workspace", req.decode())  # noqa: E731


class Probe:
    def __init__(self, guard: Guard):
        self.ran: list[str] = []

        @guard.require("manage:members", resource=IN_WORKSPACE)
        async def self_enforced(_, request, context):
            self.ran.append("self_enforced")
            return current_principal().id.encode()

        self.self_enforced = self_enforced.__get__(self)

    @requires("chat", resource=IN_WORKSPACE)
    async def read(self, request, context):
        self.ran.append("read")
        return current_principal().id.encode()

    @requires("manage:members", resource=IN_WORKSPACE)
    async def admin(self, request, context):
        self.ran.append("admin")
        return b"ok"

    @requires("chat", resource=IN_WORKSPACE)
    async def both(self, request, context):
        self.ran.append("both")
        return b"both"

    async def forgotten(self, request, context):
        self.ran.append("forgotten")
        return b"leak"

    async def by_name(self, request, context):
        self.ran.append("by_name")
        return b"named"


@pytest.fixture
async def setup(tmp_path, database_url):
    mint = TokenMint()
    authz_server, address = await start_authz(tmp_path / "authz", database_url, mint.verifier)
    channel = grpc.aio.insecure_channel(address)
    authz = AuthzClient(channel, token_source=StaticToken(mint.service("probe")), timeout=2.0)
    await authz.write(
        touch(
            "workspace:w#parent@organization:o",
            "workspace:w#viewer@user:vic",
            "workspace:w#admin@user:ada",
            "organization:o#member@user:vic",
            "organization:o#member@user:ada",
            "organization:o#member@user:carl",
            "workspace:x#parent@organization:o2",
        )
        + [active("o", "vic"), active("o", "ada"), active("o", "carl")]
    )
    guard = Guard(authz, mint.verifier)
    probe = Probe(guard)
    servers = {}

    async def serve(with_interceptor: bool) -> str:
        rules = {
            f"/{SERVICE}/by_name": guard.rule("chat", resource=IN_WORKSPACE),
            f"/{SERVICE}/both": guard.rule("manage:members", resource=IN_WORKSPACE),
        }
        server = grpc.aio.server(interceptors=[guard.interceptor(rules)] if with_interceptor else [])
        methods = {
            n: getattr(probe, n) for n in ("read", "admin", "forgotten", "by_name", "self_enforced", "both")
        }
        handlers = {n: grpc.unary_unary_rpc_method_handler(fn) for n, fn in methods.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers[with_interceptor] = server
        return f"127.0.0.1:{port}"

    yield mint, probe, serve, authz_server
    for server in servers.values():
        await server.stop(0)
    await channel.close()
    await authz_server.stop(0)


async def call(address, method, payload: bytes, metadata=()):
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return grpc.StatusCode.OK, await channel.unary_unary(f"/{SERVICE}/{method}")(
                payload, metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc


async def test_interceptor_enforces_declared_rules(setup):
    mint, probe, serve, _ = setup
    address = await serve(with_interceptor=True)
    vic, ada, carl = (mint.md(mint.user(u)) for u in ("vic", "ada", "carl"))
    assert await call(address, "read", b"w", vic) == (grpc.StatusCode.OK, b"vic")
    code, exc = await call(address, "admin", b"w", vic)
    assert (
        code == grpc.StatusCode.PERMISSION_DENIED
        and error_info(exc).metadata["capability"] == "manage:members"
    )
    assert (await call(address, "admin", b"w", ada))[0] == grpc.StatusCode.OK
    # same organization, not in the workspace: may know it exists
    assert (await call(address, "read", b"w", carl))[0] == grpc.StatusCode.PERMISSION_DENIED
    # another organization's workspace, and one that does not exist: the same NOT_FOUND
    assert (await call(address, "read", b"x", vic))[0] == grpc.StatusCode.NOT_FOUND
    assert (await call(address, "read", b"nope", vic))[0] == grpc.StatusCode.NOT_FOUND
    assert (await call(address, "by_name", b"w", vic))[1] == b"named"
    assert (await call(address, "read", b"w"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await call(address, "read", b"", vic))[0] == grpc.StatusCode.INVALID_ARGUMENT
    bad_revision = [*vic, ("x-gatehouse-revision", "soon")]
    assert (await call(address, "read", b"w", bad_revision))[0] == grpc.StatusCode.INVALID_ARGUMENT
    # a method with a declared AND an explicit rule needs both
    assert (await call(address, "both", b"w", vic))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert (await call(address, "both", b"w", ada))[1] == b"both"
    assert probe.ran == ["read", "admin", "by_name", "both"]


async def test_undeclared_methods_are_refused(setup):
    mint, probe, serve, _ = setup
    address = await serve(with_interceptor=True)
    code, exc = await call(address, "forgotten", b"w", mint.md(mint.user("ada")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "no access rule" in exc.details()
    assert probe.ran == []


async def test_requires_without_the_interceptor_refuses_to_run(setup):
    mint, probe, serve, _ = setup
    address = await serve(with_interceptor=False)
    code, exc = await call(address, "read", b"w", mint.md(mint.user("vic")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "interceptor is not installed" in exc.details()
    assert probe.ran == []


async def test_guard_require_enforces_on_its_own(setup):
    mint, probe, serve, _ = setup
    for with_interceptor in (False, True):
        address = await serve(with_interceptor=with_interceptor)
        assert (await call(address, "self_enforced", b"w", mint.md(mint.user("vic"))))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await call(address, "self_enforced", b"w", mint.md(mint.user("ada"))) == (
            grpc.StatusCode.OK,
            b"ada",
        )
    assert probe.ran == ["self_enforced", "self_enforced"]


async def test_authz_down_is_unavailable_not_allowed(setup):
    mint, probe, serve, authz_server = setup
    address = await serve(with_interceptor=True)
    vic = mint.md(mint.user("vic"))
    await authz_server.stop(0)
    probe.ran.clear()
    code, exc = await call(address, "by_name", b"w", vic)
    assert code == grpc.StatusCode.UNAVAILABLE and error_info(exc).metadata["dependency"] == "authz"
    assert probe.ran == []
