"""Fixtures: a real gateway (port 0) in front of a real authz server and a probe server.

The probe service is defined here only as descriptors (a ``FileDescriptorProto``
with ``google.api.http`` rules, never compiled into Python modules) and served by
a real :class:`~gatehouse.kit.server.GatehouseServer` with the kit's interceptors:
it proves that an annotated RPC appears in the gateway without gateway code, and it
raises each kit error class so every gRPC status reaches the gateway exactly as a
Gatehouse service sends it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from multidict import CIMultiDict

from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.kit import errors
from gatehouse.kit.context import current_client_info
from gatehouse.testing.servers import TEST_SERVICE, make_server, raw_service
from gatehouse.testing.tokens import TokenMint
from gatehouse_gateway.descriptors import Schema, load_descriptor_set
from gatehouse_gateway.server import Gateway, GatewayConfig
from gatehouse_gateway.transcoder import RouteTable
from services.authz.tests.helpers import seed, start_authz

FD = descriptor_pb2.FieldDescriptorProto
PROBE_PACKAGE = TEST_SERVICE.rsplit(".", 1)[0]  # gatehouse.test.v1
ORIGIN = "https://app.example.com"
MAX_BODY = 4096
GATEWAY_TIMEOUT = 1.0


def _rule(method: str, path: str, body: str = "", *extra: http_pb2.HttpRule) -> http_pb2.HttpRule:
    rule = http_pb2.HttpRule(body=body)
    setattr(rule, method, path)
    rule.additional_bindings.extend(extra)
    return rule


def _field(name, number, ftype, type_name="", repeated=False):
    field = FD(
        name=name,
        number=number,
        type=ftype,
        label=FD.LABEL_REPEATED if repeated else FD.LABEL_OPTIONAL,
        json_name="".join(p if i == 0 else p.capitalize() for i, p in enumerate(name.split("_"))),
    )
    if type_name:
        field.type_name = type_name
    return field


def probe_file() -> descriptor_pb2.FileDescriptorProto:
    """``gatehouse/test/v1/probe.proto``, built by hand with comments in its source info."""
    f = descriptor_pb2.FileDescriptorProto(
        name="gatehouse/test/v1/probe.proto",
        package=PROBE_PACKAGE,
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/field_mask.proto"],
    )
    color = f.enum_type.add(name="Color")
    for i, name in enumerate(("COLOR_UNSPECIFIED", "COLOR_DEEP_RED", "COLOR_BLUE")):
        color.value.add(name=name, number=i)
    item = f.message_type.add(name="Item")
    item.field.extend(
        [
            _field("id", 1, FD.TYPE_STRING),
            _field("display_name", 2, FD.TYPE_STRING),
            _field("note", 3, FD.TYPE_STRING),
            _field("color", 4, FD.TYPE_ENUM, ".gatehouse.test.v1.Color"),
        ]
    )
    node = f.message_type.add(name="Node")  # a recursive type
    node.field.extend(
        [
            _field("child", 1, FD.TYPE_MESSAGE, ".gatehouse.test.v1.Node"),
            _field("color", 2, FD.TYPE_ENUM, ".gatehouse.test.v1.Color"),
        ]
    )
    echo = f.message_type.add(name="EchoRequest")
    echo.field.extend(
        [
            _field("item", 1, FD.TYPE_MESSAGE, ".gatehouse.test.v1.Item"),
            _field("update_mask", 2, FD.TYPE_MESSAGE, ".google.protobuf.FieldMask"),
            _field("count", 3, FD.TYPE_INT32),
            _field("flag", 4, FD.TYPE_BOOL),
            _field("tags", 5, FD.TYPE_STRING, repeated=True),
            _field("kind", 6, FD.TYPE_STRING),
            _field("big", 7, FD.TYPE_INT64),
            _field("node", 8, FD.TYPE_MESSAGE, ".gatehouse.test.v1.Node"),
        ]
    )
    fail = f.message_type.add(name="FailRequest")
    fail.field.append(_field("code", 1, FD.TYPE_STRING))
    svc = f.service.add(name="ProbeService")
    methods = {
        "Echo": (
            "EchoRequest",
            "EchoRequest",
            _rule(
                "get",
                "/api/v1/probe/{kind}/items/{item.id}",
                "",
                _rule("put", "/api/v1/probe/items/{item.id}", "item"),
                _rule("patch", "/api/v1/probe/items/{item.id}", "item"),
                _rule("post", "/api/v1/probe/{kind}:echo", "*"),
            ),
        ),
        "Fail": ("FailRequest", "EchoRequest", _rule("get", "/api/v1/probe/fail/{code}")),
        "Whoami": ("FailRequest", "Item", _rule("post", "/api/v1/probe:whoami", "*")),
    }
    for name, (inp, out, rule) in methods.items():
        m = svc.method.add(
            name=name, input_type=f".{PROBE_PACKAGE}.{inp}", output_type=f".{PROBE_PACKAGE}.{out}"
        )
        m.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    comments = {
        (6, 0): "A probe service that exists only in the tests.",
        (6, 0, 2, 0): "Echoes the request it received.",
        (4, 0): "A thing with a name.",
        (4, 0, 2, 1): "What people call it.",
    }
    for path, text in comments.items():
        f.source_code_info.location.add(path=list(path), span=[0, 0, 0], leading_comments=f" {text}\n")
    return f


def _probe_error(code: str) -> BaseException:
    return {
        "INVALID_ARGUMENT": errors.InvalidArgument(errors.FieldViolation("name", "must not be empty")),
        "UNAUTHENTICATED": errors.Unauthenticated("token expired", reason="TOKEN_INVALID"),
        "PERMISSION_DENIED": errors.PermissionDenied(capability="manage:members", resource="workspace:w"),
        "NOT_FOUND": errors.NotFound("workspace", "w-1"),
        "ALREADY_EXISTS": errors.AlreadyExists("name taken", reason="NAME_TAKEN"),
        "ABORTED": errors.Aborted("stale etag"),
        "FAILED_PRECONDITION": errors.FailedPrecondition("the owner stays", reason="OWNER_CANNOT_BE_REMOVED"),
        "RESOURCE_EXHAUSTED": errors.ResourceExhausted("slow down", retry_after=7),
        "UNAVAILABLE": errors.Unavailable("authz did not answer", dependency="authz"),
        "UNIMPLEMENTED": NotImplementedError(),
        "INTERNAL": RuntimeError("secret detail that must not leak"),
    }[code]


def probe_handlers(schema: Schema):
    pool = schema.pool
    echo_cls = schema.message_class(pool.FindMessageTypeByName(f"{PROBE_PACKAGE}.EchoRequest"))
    fail_cls = schema.message_class(pool.FindMessageTypeByName(f"{PROBE_PACKAGE}.FailRequest"))
    item_cls = schema.message_class(pool.FindMessageTypeByName(f"{PROBE_PACKAGE}.Item"))

    async def echo(request: bytes, context) -> bytes:
        return echo_cls.FromString(request).SerializeToString()

    async def fail(request: bytes, context) -> bytes:
        code = fail_cls.FromString(request).code
        if code == "SLOW":
            await asyncio.sleep(GATEWAY_TIMEOUT * 3)
            return b""
        raise _probe_error(code)

    async def whoami(request: bytes, context) -> bytes:
        info = current_client_info()
        traceparent = dict(context.invocation_metadata()).get("traceparent", "")
        return item_cls(id=info.address, display_name=info.user_agent, note=traceparent).SerializeToString()

    return {"Echo": echo, "Fail": fail, "Whoami": whoami}


class Env:
    """What a test gets: the gateway's base URL, an HTTP session, tokens, and the backends."""

    def __init__(self, base, http, mint, gateway, authz_stub, authz_port, probe_port):
        self.base = base
        self.http: aiohttp.ClientSession = http
        self.mint = mint
        self.gateway: Gateway = gateway
        self.authz = authz_stub
        self.authz_port = authz_port
        self.probe_port = probe_port

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint.user(user)}"}

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict, CIMultiDict]:
        async with self.http.request(method, self.base + path, **kw) as resp:
            body = await resp.read()
            return resp.status, (json.loads(body) if body else {}), CIMultiDict(resp.headers)


@pytest.fixture
async def env(tmp_path):
    mint = TokenMint()
    schema = Schema([*load_descriptor_set().file, probe_file()])
    authz_server, authz_port = await start_authz(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'authz.db'}", mint
    )
    probe = make_server(
        tmp_path / "probe",
        raw_service(probe_handlers(schema)),
        verifier=mint.verifier,
        public=("Echo", "Fail", "Whoami"),
    )
    probe_port = await probe.start()
    await probe.wait_started()
    addresses = {"gatehouse.authz.v1": f"127.0.0.1:{authz_port}", PROBE_PACKAGE: f"127.0.0.1:{probe_port}"}
    routes = RouteTable(schema, lambda svc: addresses.get(svc.file.package))
    config = GatewayConfig(max_body_bytes=MAX_BODY, cors_origins=frozenset({ORIGIN}), timeout=GATEWAY_TIMEOUT)
    gateway = Gateway(routes, config)
    port = await gateway.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{authz_port}")
    stub = authz_service_pb2_grpc.AuthzServiceStub(channel)
    await seed(
        stub, mint.md(mint.service())
    )  # alice admin and bob viewer of workspace:w, root platform admin
    async with aiohttp.ClientSession() as http:
        yield Env(f"http://127.0.0.1:{port}", http, mint, gateway, stub, authz_port, probe_port)
    await gateway.stop()
    await channel.close()
    await probe.stop(0)
    await authz_server.stop(0)
