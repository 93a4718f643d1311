"""The HTTP/JSON gateway in front of the whole stack (processes, as `make run` starts them).

A real HTTP client drives sign-in → create workspace → add member → change role →
/access → audit events, and the error classes the services produce come back with
their HTTP status and ``{code, message, details}`` body.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from gatehouse.testing.stack import start_stack

pytestmark = pytest.mark.stack

PASSWORD = "Stack-Admin-Password-2026"
BOOTSTRAP = {
    "GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL": "ops@example.com",
    "GATEHOUSE_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
    "GATEHOUSE_BOOTSTRAP_ORG_NAME": "Gateway Inc",
    "GATEHOUSE_BOOTSTRAP_ORG_SLUG": "gateway-inc",
}
AGENT = "gateway-stack-test/1.0"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Http:
    def __init__(self, base: str):
        self.base = base

    def __call__(self, method: str, path: str, body=None, token: str | None = None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("User-Agent", AGENT)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with _OPENER.open(request, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"{}"), resp.headers
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}"), err.headers


def _reason(body) -> str:
    return next((d.get("reason", "") for d in body["details"] if d["@type"].endswith("ErrorInfo")), "")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("gateway-stack") / "data", extra_env=BOOTSTRAP)
    yield stack
    assert stack.stop() == 0, stack.log()


def test_sign_in_workspace_members_access_and_audit_through_http(stack):
    http = Http(f"http://{stack.addresses['gateway']}")
    status, login, headers = http(
        "POST",
        "/api/v1/auth/login",
        {"email": "ops@example.com", "password": PASSWORD},
        headers={"X-Request-Id": "login-1"},
    )
    assert status == 200, login
    assert headers["X-Request-Id"] == "login-1"
    admin = login["accessToken"]
    assert login["refreshToken"] and login["user"]["email"] == "ops@example.com"

    status, org, _ = http("GET", "/api/v1/organizations:bySlug/gateway-inc")
    assert status == 200, org
    org_id = org["organization"]["id"]

    # a second person in the organization, who signs in too
    status, member, _ = http(
        "POST",
        f"/api/v1/organizations/{org_id}/members",
        {
            "email": "dana@example.com",
            "displayName": "Dana",
            "initialPassword": "Blue-Harbor-Lantern-2026",
            "role": "member",
        },
        token=admin,
    )
    assert status == 200, member
    dana_id = member["member"]["userId"]
    status, dana_login, _ = http(
        "POST", "/api/v1/auth/login", {"email": "dana@example.com", "password": "Blue-Harbor-Lantern-2026"}
    )
    assert status == 200, dana_login
    dana = dana_login["accessToken"]

    status, created, _ = http(
        "POST", "/api/v1/workspaces", {"organizationId": org_id, "name": "Research"}, token=admin
    )
    assert status == 200, created
    ws = created["workspace"]
    # the same name again: 409 ALREADY_EXISTS
    status, body, _ = http(
        "POST", "/api/v1/workspaces", {"organizationId": org_id, "name": "Research"}, token=admin
    )
    assert status == 409 and body["code"] == 6, body

    # Dana holds nothing on it yet
    status, body, _ = http("GET", f"/api/v1/workspaces/{ws['id']}/access", token=dana)
    assert status == 200 and body["memberRole"] == "" and body["capabilities"] == [], body
    status, body, _ = http("GET", "/api/v1/workspaces/does-not-exist", token=admin)
    assert status == 404 and body["code"] == 5, body

    status, added, _ = http(
        "POST",
        f"/api/v1/workspaces/{ws['id']}/members",
        {"principal": {"type": "user", "id": dana_id}, "role": "viewer"},
        token=admin,
    )
    assert status == 200, added
    member_id = added["member"]["memberId"]
    assert added["member"]["role"] == "WORKSPACE_ROLE_VIEWER"
    status, access, _ = http("GET", f"/api/v1/workspaces/{ws['id']}/access", token=dana)
    assert (
        status == 200 and access["memberRole"] == "viewer" and "manage:members" not in access["capabilities"]
    )

    # a viewer may not change members: 403
    status, body, _ = http(
        "PUT", f"/api/v1/workspaces/{ws['id']}/members/{member_id}", {"role": "admin"}, token=dana
    )
    assert status == 403 and body["code"] == 7, body

    status, changed, _ = http(
        "PUT", f"/api/v1/workspaces/{ws['id']}/members/{member_id}", {"role": "admin"}, token=admin
    )
    assert status == 200 and changed["member"]["role"] == "WORKSPACE_ROLE_ADMIN", changed
    status, access, _ = http("GET", f"/api/v1/workspaces/{ws['id']}/access", token=dana)
    assert status == 200, access
    assert access["memberRole"] == "admin" and access["effectiveRole"] == "admin"
    assert access["isPlatformAdmin"] is False and "manage:members" in access["capabilities"]

    # PUT with a partial body changes only what it names
    status, updated, _ = http("PUT", f"/api/v1/workspaces/{ws['id']}", {"description": "Papers"}, token=admin)
    assert status == 200, updated
    assert updated["workspace"]["name"] == "Research" and updated["workspace"]["description"] == "Papers"

    # bad input never reaches a service as garbage
    status, body, _ = http("POST", "/api/v1/workspaces", {"organizationId": org_id, "nmae": "x"}, token=admin)
    assert status == 400 and "nmae" in body["message"]
    status, body, _ = http("GET", "/api/v1/workspaces", token=None)
    assert status == 401 and body["code"] == 16

    # the audit trail, with the client's address and user agent from the gateway
    deadline = time.monotonic() + 20
    actions: dict[str, dict] = {}
    while time.monotonic() < deadline:
        status, events, _ = http(
            "GET", f"/api/v1/audit/events?filter.organizationId={org_id}&pageSize=200", token=admin
        )
        assert status == 200, events
        actions = {e["action"]: e for e in events["events"]}
        if any("member" in a and "update" in a for a in actions) and any(
            "workspace" in a and "create" in a for a in actions
        ):
            break
        time.sleep(0.3)
    created_event = next(e for a, e in actions.items() if "workspace" in a and "create" in a)
    assert created_event["sourceAddress"] == "127.0.0.1" and created_event["userAgent"] == AGENT, (
        created_event
    )
    assert any("member" in a and "add" in a for a in actions), sorted(actions)
    assert any("member" in a and "update" in a for a in actions), sorted(actions)


def test_error_classes_from_the_services_map_to_http(stack):
    http = Http(f"http://{stack.addresses['gateway']}")
    _, login, _ = http("POST", "/api/v1/auth/login", {"email": "ops@example.com", "password": PASSWORD})
    admin, admin_id = login["accessToken"], login["user"]["id"]
    _, org, _ = http("GET", "/api/v1/organizations:bySlug/gateway-inc")
    status, created, _ = http(
        "POST",
        "/api/v1/workspaces",
        {"organizationId": org["organization"]["id"], "name": "Errors"},
        token=admin,
    )
    assert status == 200, created
    ws_id = created["workspace"]["id"]
    # FAILED_PRECONDITION → 400 with the reason
    status, body, _ = http("DELETE", f"/api/v1/workspaces/{ws_id}/members/user:{admin_id}", token=admin)
    assert status == 400 and body["code"] == 9 and _reason(body) == "OWNER_CANNOT_BE_REMOVED", body
    # ABORTED (stale etag) → 409
    status, body, _ = http("DELETE", f"/api/v1/workspaces/{ws_id}?etag=stale", token=admin)
    assert status == 409 and body["code"] == 10 and _reason(body) == "ETAG_MISMATCH", body
    # INVALID_ARGUMENT from a service → 400 with one field violation per bad field
    status, body, _ = http(
        "POST", "/api/v1/workspaces", {"organizationId": org["organization"]["id"], "name": ""}, token=admin
    )
    assert status == 400 and body["code"] == 3, body
    assert [v["field"] for d in body["details"] for v in d.get("fieldViolations", [])] == ["name"], body
    # RESOURCE_EXHAUSTED (login lockout) → 429 with Retry-After
    answers = []
    for _ in range(8):  # the lockout threshold is 5 failures
        status, body, headers = http(
            "POST", "/api/v1/auth/login", {"email": "eve@example.com", "password": "wrong-guess-1"}
        )
        answers.append(status)
        if status == 429:
            break
    assert answers[0] == 401 and answers[-1] == 429, answers
    assert _reason(body) == "LOGIN_LOCKED" and int(headers["Retry-After"]) > 0


def test_gateway_health_and_openapi_in_the_stack(stack):
    http = Http(f"http://{stack.addresses['gateway']}")
    status, body, _ = http("GET", "/readyz")
    assert status == 200 and body["status"] == "SERVING" and len(body["backends"]) == 4
    status, doc, _ = http("GET", "/openapi.json")
    assert status == 200 and "/api/v1/workspaces/{workspace_id}/access" in doc["paths"]
