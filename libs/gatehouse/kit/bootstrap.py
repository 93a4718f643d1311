"""First-time setup run by ``gatehouse-run`` once every service is healthy.

On an empty deployment it calls ``gatehouse.tenancy.v1.SetupService/Bootstrap``
with the ``GATEHOUSE_BOOTSTRAP_*`` settings:

- ``GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL`` (default ``admin@gatehouse.localhost``),
- ``GATEHOUSE_BOOTSTRAP_ADMIN_PASSWORD`` (when not given, a random one is
  generated and shown once, in the returned note — it is stored nowhere else),
- ``GATEHOUSE_BOOTSTRAP_ORG_NAME`` (default ``Default Organization``),
- ``GATEHOUSE_BOOTSTRAP_ORG_SLUG`` (default ``default-org``).

Returns a one-line note for the banner. A deployment that is already set up is
left alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import grpc

from gatehouse.kit.config import Settings

DEFAULT_ADMIN_EMAIL = "admin@gatehouse.localhost"
DEFAULT_ORG_NAME = "Default Organization"
DEFAULT_ORG_SLUG = "default-org"


def generate_password() -> str:
    """A random password that satisfies identity's policy (long, not common)."""
    return "gh-" + secrets.token_urlsafe(18)


def first_time_setup(settings: Settings, env: Mapping[str, str], *, timeout: float = 30.0) -> str:
    try:
        from gatehouse.tenancy.v1 import setup_service_pb2, setup_service_pb2_grpc
    except ImportError:
        return "skipped (tenancy contract not generated)"
    with grpc.insecure_channel(settings.address_of("tenancy")) as channel:
        stub = setup_service_pb2_grpc.SetupServiceStub(channel)
        try:
            state = stub.GetSetupState(setup_service_pb2.GetSetupStateRequest(), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "not available yet (SetupService is UNIMPLEMENTED in this build)"
            return f"could not read setup state: {exc.code().name}"
        if state.bootstrapped:
            return "deployment already bootstrapped"
        email = env.get("GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL") or DEFAULT_ADMIN_EMAIL
        password = env.get("GATEHOUSE_BOOTSTRAP_ADMIN_PASSWORD") or ""
        generated = not password
        if generated:
            password = generate_password()
        request = setup_service_pb2.BootstrapRequest(
            admin_email=email,
            admin_password=password,
            admin_display_name="Administrator",
            organization_name=env.get("GATEHOUSE_BOOTSTRAP_ORG_NAME") or DEFAULT_ORG_NAME,
            organization_slug=env.get("GATEHOUSE_BOOTSTRAP_ORG_SLUG") or DEFAULT_ORG_SLUG,
        )
        try:
            answer = stub.Bootstrap(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return "deployment already bootstrapped"
            return f"bootstrap failed: {exc.code().name}: {exc.details()}"
    org = answer.organization
    note = f"bootstrapped: platform admin {email}, organization {org.name!r} ({org.slug})"
    if generated:
        note += f"; generated admin password (shown only now): {password}"
    return note
