"""The server kit through real grpc.aio servers on loopback: error mapping,
request ids, health transitions, reflection, and authentication on the wire."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gatehouse.kit import errors
from gatehouse.kit.context import Principal, current_principal
from gatehouse.kit.interceptors import _new_request_id
from gatehouse.kit.server import GenericOnly
from gatehouse.kit.status import bad_request, error_info, retry_info
from gatehouse.testing.servers import TEST_SERVICE, call, make_server, raw_service

ERROR_CASES = [
    (errors.InvalidArgument.field("email", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated("bad token", reason="TOKEN_INVALID"), grpc.StatusCode.UNAUTHENTICATED),
    (
        errors.PermissionDenied(capability="manage:members", resource="workspace:w1"),
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (errors.NotFound("workspace", "w1"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists("slug taken"), grpc.StatusCode.ALREADY_EXISTS),
    (
        errors.FailedPrecondition("owner", reason="OWNER_CANNOT_BE_REMOVED"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (errors.Aborted("stale etag", reason="ETAG_MISMATCH"), grpc.StatusCode.ABORTED),
    (
        errors.ResourceExhausted("locked", retry_after=42.2, reason="LOGIN_LOCKED"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    (errors.Unavailable("authz down", dependency="authz"), grpc.StatusCode.UNAVAILABLE),
    (RuntimeError("secret internal detail"), grpc.StatusCode.INTERNAL),
    (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
]


async def allow_nobody(token: str) -> Principal:
    raise errors.Unauthenticated("invalid or expired access token", reason="TOKEN_INVALID")


async def accept_test_token(token: str) -> Principal:
    # A deliberately trivial verifier for tests that are about the interceptor
    # plumbing, not about JWTs (real-token tests use TokenVerifier below).
    if token != "good":
        raise errors.Unauthenticated("invalid or expired access token", reason="TOKEN_INVALID")
    return Principal(kind="user", id="u1", session_id="s1", amr=("pwd",))


def _raiser(exc: BaseException):
    async def handler(request: bytes, context) -> bytes:
        raise exc

    return handler


@pytest.fixture
async def error_server(tmp_path):
    methods = {f"Raise{i}": _raiser(exc) for i, (exc, _) in enumerate(ERROR_CASES)}

    async def whoami(request: bytes, context) -> bytes:
        p = current_principal()
        return (p.subject if p else "anonymous").encode()

    methods["WhoAmI"] = whoami
    methods["Public"] = whoami
    server = make_server(tmp_path, raw_service(methods), verifier=accept_test_token, public=["Public"])
    port = await server.start()
    await server.wait_started()
    yield port
    await server.stop(0)


@pytest.mark.parametrize("index", range(len(ERROR_CASES)))
async def test_domain_errors_map_to_codes_with_details(error_server, index):
    exc, code = ERROR_CASES[index]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(error_server, f"Raise{index}", metadata=[("authorization", "Bearer good")])
    err = info.value
    assert err.code() == code
    if isinstance(exc, errors.InvalidArgument):
        violations = bad_request(err).field_violations
        assert [(v.field, v.description) for v in violations] == [("email", "must not be empty")]
    if isinstance(exc, errors.GatehouseError) and exc.reason:
        info_ = error_info(err)
        assert info_.reason == exc.reason and info_.domain == "gatehouse"
        assert dict(info_.metadata) == exc.metadata
    if isinstance(exc, errors.PermissionDenied):
        assert error_info(err).metadata["capability"] == "manage:members"
    if isinstance(exc, errors.ResourceExhausted):
        assert retry_info(err).retry_delay.seconds == 43
    if code == grpc.StatusCode.INTERNAL:
        assert "secret" not in err.details()
        assert err.details() == "internal error"
    # every answer, failure included, echoes a request id
    assert any(k == "x-request-id" and v for k, v in err.trailing_metadata())


async def test_request_id_is_echoed_or_generated(error_server):
    md = [("authorization", "Bearer good"), ("x-request-id", "req-123")]
    body, trailing = await call(error_server, "WhoAmI", metadata=md)
    assert body == b"user:u1"
    assert ("x-request-id", "req-123") in tuple(trailing)
    _, trailing = await call(error_server, "WhoAmI", metadata=[("authorization", "Bearer good")])
    generated = dict(trailing)["x-request-id"]
    assert len(generated) == 36 and generated[14] == "7"  # a UUIDv7


def test_generated_request_ids_are_unique_ordered_uuid7_of_now():
    before = time.time_ns() // 1_000_000
    ids = [_new_request_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids) and ids == sorted(ids)  # unique, and ordered within a process
    for value in (ids[0], ids[-1]):
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
        assert before <= parsed.int >> 80 <= after  # the unix-ms timestamp field


async def test_missing_and_bad_tokens_are_unauthenticated(error_server):
    for md in ([], [("authorization", "Bearer nope")], [("authorization", "Basic Zm9vOmJhcg==")]):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(error_server, "WhoAmI", metadata=md)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(info.value).reason == "TOKEN_INVALID"


async def test_public_method_needs_no_token_but_refuses_a_bad_one(error_server):
    body, _ = await call(error_server, "Public")
    assert body == b"anonymous"
    body, _ = await call(error_server, "Public", metadata=[("authorization", "Bearer good")])
    assert body == b"user:u1"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(error_server, "Public", metadata=[("authorization", "Bearer forged")])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


class CountingVerifier:
    """A verifier with a synchronous cache probe (as authz's CachedVerifier): tokens it has
    cached are answered by ``cached``; the kit awaits the verifier itself only on a miss."""

    def __init__(self):
        self.verified: list[str] = []
        self.known = {"good": Principal(kind="user", id="u1")}

    def cached(self, token: str) -> Principal | None:
        return self.known.get(token)

    async def __call__(self, token: str) -> Principal:
        self.verified.append(token)
        if token != "fresh":
            raise errors.Unauthenticated("invalid or expired access token", reason="TOKEN_INVALID")
        return Principal(kind="user", id="u2")


async def test_cached_tokens_skip_the_verifier_and_misses_reach_it(tmp_path):
    async def whoami(request: bytes, context) -> bytes:
        return current_principal().subject.encode()

    verifier = CountingVerifier()
    server = make_server(tmp_path, raw_service({"WhoAmI": whoami}), verifier=verifier)
    port = await server.start()
    await server.wait_started()
    try:
        for _ in range(3):
            body, _ = await call(port, "WhoAmI", metadata=[("authorization", "Bearer good")])
            assert body == b"user:u1"
        assert verifier.verified == []  # answered from the cache probe, no verification
        body, _ = await call(port, "WhoAmI", metadata=[("authorization", "Bearer fresh")])
        assert body == b"user:u2" and verifier.verified == ["fresh"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, "WhoAmI", metadata=[("authorization", "Bearer forged")])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert verifier.verified == ["fresh", "forged"]
    finally:
        await server.stop(0)


class RecordingServer:
    def __init__(self):
        self.generic, self.registered = [], []

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered.append(service)


def test_services_are_added_as_generic_handlers_only():
    async def echo(request: bytes, context) -> bytes:
        return request

    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    details = type("Details", (), {"method": f"/{TEST_SERVICE}/Echo", "invocation_metadata": ()})()
    recorder = RecordingServer()
    GenericOnly(recorder).add_registered_method_handlers(TEST_SERVICE, handlers)
    assert recorder.registered == []  # grpc.aio never sees a registered method
    assert [h.service(details) for h in recorder.generic] == [handlers["Echo"]]
    # both ways, as generated code does: one generic handler, no copy to look through per call
    recorder = RecordingServer()
    both = GenericOnly(recorder)
    both.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TEST_SERVICE, handlers),))
    both.add_registered_method_handlers(TEST_SERVICE, handlers)
    assert recorder.registered == [] and len(recorder.generic) == 1
    assert recorder.generic[0].service(details) is handlers["Echo"]


async def test_a_service_registered_both_ways_is_served(tmp_path):
    """As generated ``add_*Servicer_to_server`` code registers: generic and registered."""

    async def echo(request: bytes, context) -> bytes:
        return request

    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}

    def register(server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TEST_SERVICE, handlers),))
        server.add_registered_method_handlers(TEST_SERVICE, handlers)

    def register_only(server) -> None:
        server.add_registered_method_handlers(TEST_SERVICE, handlers)

    for how in (register, register_only):
        server = make_server(tmp_path, how, verifier=accept_test_token)
        port = await server.start()
        await server.wait_started()
        try:
            body, _ = await call(port, "Echo", b"hi", metadata=[("authorization", "Bearer good")])
            assert body == b"hi"
        finally:
            await server.stop(0)


async def test_health_reports_not_serving_until_startup_and_dependencies(tmp_path):
    migrated = asyncio.Event()

    async def slow_migration() -> None:
        await migrated.wait()

    # The dependency is a second kit server that is not started yet.
    dep = make_server(tmp_path / "dep", raw_service({}), verifier=allow_nobody)
    from gatehouse.testing.stack import free_port

    dep_port = free_port()
    server = make_server(
        tmp_path,
        raw_service({}),
        verifier=allow_nobody,
        on_start=[slow_migration],
        depends_on=["authz"],
        authz_address=f"127.0.0.1:{dep_port}",
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(name: str = "") -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status

        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status(TEST_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        migrated.set()
        await asyncio.sleep(0.5)
        # migrations ran, but the dependency does not answer yet
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        dep.settings = dep.settings.__class__(
            **{**dep.settings.__dict__, "listen_address": f"127.0.0.1:{dep_port}"}
        )
        await dep.start()
        await asyncio.wait_for(server.wait_started(), 5)
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        assert await status(TEST_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        await server.stop(0)
    await dep.stop(0)


def _list_services(port: int) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_reflection_lists_services_over_v1alpha_and_v1(error_server):
    services = await asyncio.to_thread(_list_services, error_server)
    assert TEST_SERVICE in services
    assert "grpc.health.v1.Health" in services
    # grpc.reflection.v1 answers on the same servicer (buf curl asks v1 first)
    from grpc_reflection.v1alpha import reflection_pb2

    async with grpc.aio.insecure_channel(f"127.0.0.1:{error_server}") as channel:
        rpc = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call_ = rpc(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = []
        async for answer in call_:
            names = [s.name for s in answer.list_services_response.service]
            break
    assert TEST_SERVICE in names


async def test_graceful_stop_lets_in_flight_calls_finish(tmp_path):
    started = asyncio.Event()

    async def slow(request: bytes, context) -> bytes:
        started.set()
        await asyncio.sleep(0.5)
        return b"done"

    server = make_server(tmp_path, raw_service({"Slow": slow}), verifier=accept_test_token, public=["Slow"])
    port = await server.start()
    await server.wait_started()
    pending = asyncio.create_task(call(port, "Slow"))
    await started.wait()
    await server.stop(grace=3)
    body, _ = await pending
    assert body == b"done"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(port, "Slow", timeout=1)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_calls_wait_for_start_up_while_health_answers(tmp_path):
    # Before, a server took calls as soon as it listened, while its start-up hooks (migrations,
    # authz's index load) were still running: answers could come from half-loaded state.
    loaded = asyncio.Event()

    async def slow_load() -> None:
        await loaded.wait()

    async def whoami(request: bytes, context) -> bytes:
        return current_principal().subject.encode()

    server = make_server(
        tmp_path, raw_service({"WhoAmI": whoami}), verifier=accept_test_token, on_start=[slow_load]
    )
    port = await server.start()
    try:
        md = [("authorization", "Bearer good")]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, "WhoAmI", metadata=md)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(info.value).reason == "SERVICE_STARTING"
        assert dict(info.value.trailing_metadata())["x-request-id"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        loaded.set()
        await asyncio.wait_for(server.wait_started(), 5)
        body, _ = await call(port, "WhoAmI", metadata=md)
        assert body == b"user:u1"
    finally:
        await server.stop(0)
