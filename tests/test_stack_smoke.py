"""Stack smoke test: the services as processes, exactly as `make run` starts them."""

from __future__ import annotations

import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gatehouse.testing.stack import pid_alive, start_stack

pytestmark = pytest.mark.stack

EXPECTED = {
    "identity": {"gatehouse.identity.v1.IdentityService"},
    "tenancy": {
        "gatehouse.tenancy.v1.SetupService",
        "gatehouse.tenancy.v1.OrganizationService",
        "gatehouse.tenancy.v1.WorkspaceService",
        "gatehouse.tenancy.v1.GroupService",
    },
    "authz": {"gatehouse.authz.v1.AuthzService"},
    "audit": {"gatehouse.audit.v1.AuditService"},
}


def test_stack_starts_serves_health_and_reflection_and_stops_cleanly(tmp_path):
    stack = start_stack(tmp_path / "data")
    try:
        pids = stack.child_pids()
        assert set(pids) == set(EXPECTED) | {"gateway"}
        for service, names in EXPECTED.items():
            with grpc.insecure_channel(stack.addresses[service]) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for name in ("", *names):
                    answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, name)
                listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
                assert names <= listed, (service, listed)
                assert "grpc.health.v1.Health" in listed
        banner = stack.log()
        for service in (*EXPECTED, "gateway"):
            assert stack.addresses[service] in banner
        assert "buf curl" in banner
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
    assert "gatehouse-run: stopped" in stack.log()
    for service, pid in pids.items():
        assert not pid_alive(pid), f"{service} (pid {pid}) is still running"


def test_launcher_reports_a_child_that_dies(tmp_path):
    stack = start_stack(tmp_path / "data")
    try:
        pids = stack.child_pids()
        import os

        os.kill(pids["audit"], signal.SIGKILL)
        code = stack.process.wait(timeout=30)
    finally:
        if stack.process.poll() is None:
            stack.stop()
    assert code == 1
    assert "audit exited unexpectedly" in stack.log()
    for pid in pids.values():
        assert not pid_alive(pid)
