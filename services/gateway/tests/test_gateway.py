"""The gateway through real HTTP, in front of a real authz server and a probe server."""

from __future__ import annotations

import json
import re

import pytest
from google.api import annotations_pb2
from openapi_spec_validator import validate

from gatehouse.kit.config import ConfigError
from gatehouse.kit.telemetry import setup_telemetry
from gatehouse_gateway.descriptors import Schema, load_descriptor_set
from gatehouse_gateway.openapi import build_openapi
from gatehouse_gateway.server import Gateway, GatewayConfig
from gatehouse_gateway.transcoder import RouteTable, parse_template

from .conftest import GATEWAY_TIMEOUT, MAX_BODY, ORIGIN, PROBE_PACKAGE, probe_file


def _violations(body):
    return [
        v["field"]
        for d in body["details"]
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    ]


def _error_info(body):
    return next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))


async def check(env, *, caller: str, subject: str, capability: str) -> tuple[int, dict]:
    """POST /api/v1/authz:check on workspace:w as ``caller``."""
    status, body, _ = await env.call(
        "POST",
        "/api/v1/authz:check",
        json={
            "subject": {"type": "user", "id": subject},
            "resource": {"type": "workspace", "id": "w"},
            "capability": capability,
        },
        headers=env.auth(caller),
    )
    return status, body


# ------------------------------------------------------------------ routing and mapping


async def test_authz_access_through_the_gateway_in_camel_case(env):
    status, body, headers = await env.call(
        "POST",
        "/api/v1/authz:access",
        json={"subject": {"type": "user", "id": "bob"}, "resource": {"type": "workspace", "id": "w"}},
        headers=env.auth("bob"),
    )
    assert status == 200, body
    assert body["memberRole"] == "viewer" and body["effectiveRole"] == "viewer"
    assert body["isPlatformAdmin"] is False  # zero values are emitted, as grpc-gateway does
    assert body["capabilities"] == ["chat", "read:files", "read:model", "view:wiki"]
    assert int(body["revision"]) >= 1  # int64 is a JSON string in protobuf's mapping
    assert headers["Content-Type"].startswith("application/json")


async def test_check_get_catalog_and_query_parameters_on_nested_fields(env):
    status, body = await check(env, caller="alice", subject="alice", capability="manage:members")
    assert status == 200 and body["allowed"] is True and body["reason"] == "DECISION_REASON_ROLE"
    status, body, _ = await env.call("GET", "/api/v1/authz/catalog", headers=env.auth("bob"))
    assert status == 200 and "catalog" in body
    # snake_case and camelCase query names both map onto the nested request field
    status, body, _ = await env.call(
        "GET",
        "/api/v1/authz/grants?resource.type=spaceship&resource.id=x&page_size=5",
        headers=env.auth("alice"),
    )
    assert status == 400 and "resource.type" in _violations(body), body


async def test_path_query_and_body_map_onto_the_request(env):
    # GET: path variables (incl. nested item.id, percent-decoded) and typed query parameters
    status, body, _ = await env.call(
        "GET",
        "/api/v1/probe/gadget/items/a%2Fb?count=3&flag=true&tags=x&tags=y&big=9007199254740993&item.note=n",
    )
    assert status == 200, body
    assert body["kind"] == "gadget"
    assert body["item"] == {"id": "a/b", "displayName": "", "note": "n", "color": "COLOR_UNSPECIFIED"}
    assert (body["count"], body["flag"], body["tags"], body["big"]) == (
        3,
        True,
        ["x", "y"],
        "9007199254740993",
    )
    # POST body "*" with a :verb suffix; the path wins over the body; short enum names are accepted
    status, body, _ = await env.call(
        "POST",
        "/api/v1/probe/widget:echo",
        json={"kind": "ignored", "item": {"displayName": "D", "color": "deep_red"}, "update_mask": "note"},
    )
    assert status == 200, body
    assert body["kind"] == "widget" and body["item"]["displayName"] == "D"
    assert body["item"]["color"] == "COLOR_DEEP_RED" and body["updateMask"] == "note"


async def test_put_with_partial_body_derives_the_update_mask(env):
    status, body, _ = await env.call("PUT", "/api/v1/probe/items/i-1", json={"displayName": "New"})
    assert status == 200, body
    assert body["item"]["id"] == "i-1" and body["updateMask"] == "displayName"  # FieldMask JSON is camelCase
    status, body, _ = await env.call(
        "PATCH", "/api/v1/probe/items/i-1", json={"note": "x", "color": "blue", "id": "other"}
    )
    assert body["item"]["id"] == "i-1"  # the path's id, never the body's, and id is not in the mask
    assert sorted(body["updateMask"].split(",")) == ["color", "note"]
    # an explicit mask is kept as given
    status, body, _ = await env.call(
        "PUT", "/api/v1/probe/items/i-1?updateMask=note", json={"displayName": "A", "note": "B"}
    )
    assert body["updateMask"] == "note"
    # nothing to update is a client error, not a silent full replace
    for empty in (b"{}", b"null", b""):
        status, body, _ = await env.call("PUT", "/api/v1/probe/items/i-1", data=empty)
        assert status == 400 and _violations(body) == ["item"], empty


async def test_a_new_annotated_rpc_appears_without_gateway_code():
    """The route table comes from descriptors alone: the probe RPCs exist nowhere in gateway code."""
    schema = Schema([*load_descriptor_set().file, probe_file()])
    table = RouteTable(schema, lambda svc: "127.0.0.1:1")
    probe_routes = {
        (r.http_method, r.template.template, r.method.name)
        for r in table.routes
        if r.method.full_name.startswith(PROBE_PACKAGE)
    }
    assert probe_routes == {
        ("GET", "/api/v1/probe/{kind}/items/{item.id}", "Echo"),
        ("PUT", "/api/v1/probe/items/{item.id}", "Echo"),
        ("PATCH", "/api/v1/probe/items/{item.id}", "Echo"),
        ("POST", "/api/v1/probe/{kind}:echo", "Echo"),
        ("GET", "/api/v1/probe/fail/{code}", "Fail"),
        ("POST", "/api/v1/probe:whoami", "Whoami"),
    }
    route, found = table.match("POST", "/api/v1/probe/thing:echo")
    assert (route.method.name, found) == ("Echo", {"kind": "thing"})


def test_path_templates():
    t = parse_template("/api/v1/workspaces/{workspace_id}/members/{member_id}")
    assert t.match("/api/v1/workspaces/w1/members/user:42") == {"workspace_id": "w1", "member_id": "user:42"}
    assert t.match("/api/v1/workspaces/w1/members") is None
    verb = parse_template("/api/v1/organizations/{organization_id}:undelete")
    assert verb.verb == "undelete" and verb.match("/api/v1/organizations/o1:undelete") == {
        "organization_id": "o1"
    }
    assert verb.match("/api/v1/organizations/o1") is None
    literal_colon = parse_template("/api/v1/organizations:bySlug/{slug}")
    assert literal_colon.verb == "" and literal_colon.match("/api/v1/organizations:bySlug/acme") == {
        "slug": "acme"
    }
    deep = parse_template("/v1/{name=projects/*/files/**}:get")
    assert deep.match("/v1/projects/p/files/a/b:get") == {"name": "projects/p/files/a/b"}
    assert deep.openapi_path == "/v1/{name}:get"


async def test_unknown_path_and_wrong_method(env):
    status, body, _ = await env.call("GET", "/api/v1/nowhere")
    assert status == 404 and body["code"] == 5
    status, body, headers = await env.call("DELETE", "/api/v1/authz:check")
    assert status == 405 and headers["Allow"] == "POST"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("code", "grpc_code", "http_status"),
    [
        ("INVALID_ARGUMENT", 3, 400),
        ("UNAUTHENTICATED", 16, 401),
        ("PERMISSION_DENIED", 7, 403),
        ("NOT_FOUND", 5, 404),
        ("ALREADY_EXISTS", 6, 409),
        ("ABORTED", 10, 409),
        ("FAILED_PRECONDITION", 9, 400),
        ("RESOURCE_EXHAUSTED", 8, 429),
        ("UNAVAILABLE", 14, 503),
        ("UNIMPLEMENTED", 12, 501),
        ("INTERNAL", 13, 500),
        ("SLOW", 4, 504),
    ],
)
async def test_each_grpc_status_maps_to_its_http_status_and_body(env, code, grpc_code, http_status):
    status, body, headers = await env.call("GET", f"/api/v1/probe/fail/{code}")
    assert status == http_status, body
    assert body["code"] == grpc_code and body["message"] and isinstance(body["details"], list)
    if code == "INVALID_ARGUMENT":
        assert body["details"][0]["fieldViolations"] == [
            {"field": "name", "description": "must not be empty"}
        ]
    if code == "PERMISSION_DENIED":
        info = _error_info(body)
        assert info["reason"] == "CAPABILITY_DENIED" and info["metadata"]["capability"] == "manage:members"
    if code == "FAILED_PRECONDITION":
        assert _error_info(body)["reason"] == "OWNER_CANNOT_BE_REMOVED"
    if code == "RESOURCE_EXHAUSTED":
        assert headers["Retry-After"] == "7"
        assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"])
    else:
        assert "Retry-After" not in headers
    if code == "INTERNAL":
        assert body["message"] == "internal error" and "secret" not in json.dumps(body)
    if code == "SLOW":
        assert body["message"] == "the service did not answer in time"
    assert headers["X-Request-Id"]


async def test_authz_errors_come_back_with_their_details(env):
    # no token: 401
    status, body, _ = await env.call("GET", "/api/v1/authz/catalog")
    assert status == 401 and body["code"] == 16
    # a user checking someone else: 403 with ErrorInfo
    status, body = await check(env, caller="bob", subject="alice", capability="chat")
    assert status == 403 and body["code"] == 7 and _error_info(body)["domain"] == "gatehouse"
    # an unknown capability: 400 naming the field
    status, body = await check(env, caller="bob", subject="bob", capability="fly:away")
    assert status == 400 and _violations(body) == ["capability"]
    # a garbage token: 401
    status, body, _ = await env.call("GET", "/api/v1/authz/catalog", headers={"Authorization": "Bearer nope"})
    assert status == 401


async def test_backend_down_is_503_without_internal_detail(env):
    await env.gateway.stop()  # close channels, then point a fresh gateway at a dead port
    schema = Schema([*load_descriptor_set().file, probe_file()])
    table = RouteTable(schema, lambda svc: "127.0.0.1:1" if svc.file.package == PROBE_PACKAGE else None)
    gateway = Gateway(table, GatewayConfig(timeout=GATEWAY_TIMEOUT))
    port = await gateway.start()
    try:
        async with env.http.get(f"http://127.0.0.1:{port}/api/v1/probe/fail/NOT_FOUND") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["code"] == 14
            assert body["message"] == "the service is unavailable"
        async with env.http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["status"] == "NOT_SERVING"
            assert body["backends"]["127.0.0.1:1"] != "SERVING"
    finally:
        await gateway.stop()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b'{"subject": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"subject": {"type": "user"}, "colour": "red"}', 'no field named "colour"'),
        (b'{"subject": {"type": 5}}', "field subject.type: expected string"),
        (b'{"subject": "user:bob"}', "subject"),
        (b"\xff\xfe{}", "JSON"),
        (b'{"consistency": {"atLeastRevision": "many"}}', "field consistency.atLeastRevision"),
        (b"[" * 5000 + b"]" * 5000, "request body"),
    ],
)
async def test_bad_input_is_400_with_a_clear_message_never_500(env, payload, fragment):
    status, body, _ = await env.call(
        "POST",
        "/api/v1/authz:access",
        data=payload if len(payload) <= MAX_BODY else payload[:MAX_BODY],
        headers={**env.auth("bob"), "Content-Type": "application/json"},
    )
    assert status == 400, body
    assert body["code"] == 3 and fragment in body["message"], body["message"]
    if fragment.startswith("field "):  # the field also comes as a BadRequest violation
        assert _violations(body) == [fragment.split()[1].rstrip(":")]


async def test_recursive_messages_nested_too_deep_are_400(env):
    def nested(depth):
        return {"color": "blue"} if depth == 0 else {"child": nested(depth - 1)}

    status, body, _ = await env.call("POST", "/api/v1/probe/k:echo", json={"node": nested(3)})
    assert status == 200 and body["node"]["child"]["child"]["child"]["color"] == "COLOR_BLUE"
    deep = json.dumps({"node": nested(350)}, separators=(",", ":"))  # within the body limit
    status, body, _ = await env.call("POST", "/api/v1/probe/k:echo", data=deep)
    assert status == 400 and body["code"] == 3 and "deep" in body["message"], body


async def test_bad_query_parameters_are_400(env):
    for query, fragment in [
        ("count=many", "count"),
        ("flag=maybe", "not a boolean"),
        ("nothing=1", "unknown query parameter"),
        ("count=1&count=2", "not repeated"),
        ("item=x", "message field"),
        ("item.id=x", "already set"),
    ]:
        status, body, _ = await env.call("GET", f"/api/v1/probe/k/items/i?{query}")
        assert status == 400 and fragment in body["message"], (query, body)
    status, body, _ = await env.call("POST", "/api/v1/probe/k:echo?count=1", json={})
    assert status == 400 and "whole request" in body["message"]


async def test_oversized_body_is_413(env):
    big = json.dumps({"subject": {"type": "user", "id": "x" * MAX_BODY}})
    status, body, _ = await env.call("POST", "/api/v1/authz:access", data=big, headers=env.auth("bob"))
    assert status == 413 and str(MAX_BODY) in body["message"]

    async def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(10):
            yield b" " * 1024

    status, body, _ = await env.call("POST", "/api/v1/authz:access", data=chunks(), headers=env.auth("bob"))
    assert status == 413


# ------------------------------------------------------------------ headers


async def test_request_id_round_trip_and_client_info_reach_the_backend(env):
    status, body, headers = await env.call(
        "POST",
        "/api/v1/probe:whoami",
        json={},
        headers={"X-Request-Id": "req-123", "User-Agent": "probe-agent/1.0"},
    )
    assert status == 200 and headers["X-Request-Id"] == "req-123"
    assert body["id"] == "127.0.0.1" and body["displayName"] == "probe-agent/1.0"
    # without one, the gateway generates one that the backend echoes
    _, _, headers = await env.call("GET", "/api/v1/authz/catalog", headers=env.auth("bob"))
    assert len(headers["X-Request-Id"]) >= 16
    # a forged X-Forwarded-For is not trusted by default
    _, body, _ = await env.call(
        "POST", "/api/v1/probe:whoami", json={}, headers={"X-Forwarded-For": "6.6.6.6"}
    )
    assert body["id"] == "127.0.0.1"


async def test_trace_context_continues_through_the_gateway(env):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    incoming = f"00-{trace_id}-{parent}-01"
    # without an exporter the W3C headers pass through unchanged
    _, body, _ = await env.call("POST", "/api/v1/probe:whoami", json={}, headers={"traceparent": incoming})
    assert body["note"] == incoming
    # with one, the gateway's SERVER span continues the trace and becomes the services' parent
    telemetry = setup_telemetry("gateway", "memory")
    traced = Gateway(env.gateway.routes, GatewayConfig(), tracer=telemetry.tracer)
    port = await traced.start()
    try:
        async with env.http.post(
            f"http://127.0.0.1:{port}/api/v1/probe:whoami", json={}, headers={"traceparent": incoming}
        ) as resp:
            body = await resp.json()
    finally:
        await traced.stop()
    (span,) = telemetry.span_exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == trace_id and f"{span.parent.span_id:016x}" == parent
    assert span.attributes["http.response.status_code"] == 200
    assert body["note"] == f"00-{trace_id}-{span.context.span_id:016x}-01"


async def test_cors_allow_list(env):
    status, _, headers = await env.call(
        "OPTIONS",
        "/api/v1/authz:check",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "POST"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, _, headers = await env.call(
        "OPTIONS",
        "/api/v1/authz:check",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    _, _, headers = await env.call(
        "GET", "/api/v1/authz/catalog", headers={**env.auth("bob"), "Origin": ORIGIN}
    )
    assert (
        headers["Access-Control-Allow-Origin"] == ORIGIN
        and "X-Request-Id" in headers["Access-Control-Expose-Headers"]
    )
    _, _, headers = await env.call(
        "GET", "/api/v1/authz/catalog", headers={**env.auth("bob"), "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in headers


# ------------------------------------------------------------------ health and OpenAPI


async def test_healthz_and_readyz(env):
    status, body, _ = await env.call("GET", "/healthz")
    assert status == 200 and body == {"status": "SERVING"}
    status, body, _ = await env.call("GET", "/readyz")
    assert status == 200 and body["status"] == "SERVING"
    assert set(body["backends"].values()) == {"SERVING"} and len(body["backends"]) == 2


async def test_openapi_lists_every_annotated_route_and_validates(env):
    status, doc, _ = await env.call("GET", "/openapi.json")
    assert status == 200
    validate(doc)  # OpenAPI 3 schema validation (openapi-spec-validator)
    assert doc["openapi"].startswith("3.")
    listed = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert listed == {(r.http_method, r.template.openapi_path) for r in env.gateway.routes.routes}
    echo = doc["paths"]["/api/v1/probe/items/{item.id}"]["put"]
    assert echo["summary"] == "Echoes the request it received."
    item = doc["components"]["schemas"][f"{PROBE_PACKAGE}.Item"]
    assert item["description"] == "A thing with a name."
    assert item["properties"]["displayName"]["description"] == "What people call it."
    access = doc["paths"]["/api/v1/authz:access"]["post"]
    assert access["summary"].startswith("Everything a subject may do on a resource")
    response = doc["components"]["schemas"]["gatehouse.authz.v1.GetAccessResponse"]["properties"]
    assert {"memberRole", "isPlatformAdmin", "effectiveRole", "capabilities"} <= set(response)


def test_openapi_of_the_full_contract_validates():
    """Every annotated RPC of the four services, as the deployed gateway serves them."""
    schema = Schema.from_descriptor_set(load_descriptor_set())
    table = RouteTable(schema, lambda svc: "127.0.0.1:1")
    doc = build_openapi(table)
    validate(doc)
    paths = doc["paths"]
    # every rule and additional binding of the descriptor set, read independently of the gateway
    annotated = set()
    for f in load_descriptor_set().file:
        for svc in f.service:
            for m in svc.method:
                if m.options.HasExtension(annotations_pb2.http):
                    rule = m.options.Extensions[annotations_pb2.http]
                    for r in [rule, *rule.additional_bindings]:
                        kind = r.WhichOneof("pattern")
                        annotated.add((kind, re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", getattr(r, kind))))
    listed = {(method, path) for path, item in paths.items() for method in item}
    assert listed == annotated and len(annotated) >= 70
    for path, method in [
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/refresh", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/organizations", "get"),
        ("/api/v1/organizations", "post"),
        ("/api/v1/organizations/{organization.id}", "patch"),
        ("/api/v1/organizations/{organization_id}", "delete"),
        ("/api/v1/organizations/{organization_id}:undelete", "post"),
        ("/api/v1/invitations:accept", "post"),
        ("/api/v1/workspaces/{workspace.id}", "put"),
        ("/api/v1/workspaces/{workspace.id}", "patch"),
        ("/api/v1/workspaces/{workspace_id}/members/{member_id}", "put"),
        ("/api/v1/workspaces/{workspace_id}/members/{member_id}", "delete"),
        ("/api/v1/workspaces/{workspace_id}/access", "get"),
        ("/api/v1/audit/events", "get"),
    ]:
        assert method in paths.get(path, {}), (method, path)


def test_configuration_from_environment():
    config = GatewayConfig.from_env(
        {
            "GATEHOUSE_GATEWAY_MAX_BODY_BYTES": "2048",
            "GATEHOUSE_GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example/",
            "GATEHOUSE_GATEWAY_TIMEOUT": "2.5",
            "GATEHOUSE_GATEWAY_TRUST_FORWARDED": "true",
        }
    )
    assert (config.max_body_bytes, config.timeout, config.trust_forwarded) == (2048, 2.5, True)
    assert config.cors_origins == {"https://a.example", "https://b.example"}
    defaults = GatewayConfig.from_env({})
    assert (defaults.max_body_bytes, defaults.cors_origins, defaults.trust_forwarded) == (
        1024 * 1024,
        set(),
        False,
    )
    for name, value in [
        ("MAX_BODY_BYTES", "lots"),
        ("MAX_BODY_BYTES", "0"),
        ("MAX_BODY_BYTES", "1.5"),
        ("TIMEOUT", "-1"),
        ("TIMEOUT", "inf"),  # no deadline at all was accepted before
        ("TIMEOUT", "nan"),
        ("TRUST_FORWARDED", "maybe"),
        ("CORS_ORIGINS", "app.example.com"),
    ]:
        with pytest.raises(ConfigError, match=f"GATEHOUSE_GATEWAY_{name}"):
            GatewayConfig.from_env({f"GATEHOUSE_GATEWAY_{name}": value})
