"""GatehouseClient: deadlines, retries only for idempotent calls, bearer token, trace propagation.

The server is a real grpc.aio server on 127.0.0.1:0 serving AuthzService with a
*flapping* servicer written for this test: it answers UNAVAILABLE a given number
of times and then succeeds. A real authz cannot be made to fail on cue like
that, which is the one thing this stand-in is for.
"""

from __future__ import annotations

import time

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.client import GatehouseClient, RetryPolicy, StaticToken, is_idempotent
from gatehouse.kit.telemetry import setup_telemetry
from gatehouse.type.v1 import refs_pb2


class Flapping(authz_service_pb2_grpc.AuthzServiceServicer):
    """Fails the first ``failures`` calls of each method with ``code``, then answers."""

    def __init__(self):
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.calls: dict[str, int] = {}
        self.metadata: list[dict[str, str]] = []

    async def _maybe_fail(self, name, context):
        self.calls[name] = self.calls.get(name, 0) + 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls[name] <= self.failures:
            await context.abort(self.code, f"{name} attempt {self.calls[name]} refused on purpose")

    async def CheckCapability(self, request, context):
        await self._maybe_fail("CheckCapability", context)
        return pb.CheckCapabilityResponse(allowed=True, revision=7)

    async def WriteRelationships(self, request, context):
        await self._maybe_fail("WriteRelationships", context)
        return pb.WriteRelationshipsResponse(revision=8)


@pytest.fixture
async def flapping():
    servicer = Flapping()
    server = grpc.aio.server()
    authz_service_pb2_grpc.add_AuthzServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


def _client(address, **kwargs) -> GatehouseClient:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05))
    return GatehouseClient({"authz": address}, **kwargs)


def _check():
    return pb.CheckCapabilityRequest(
        subject=refs_pb2.SubjectRef(type="user", id="u"),
        resource=refs_pb2.ResourceRef(type="workspace", id="w"),
        capability="chat",
    )


async def test_idempotent_call_is_retried_on_unavailable(flapping):
    servicer, address = flapping
    servicer.failures = 3
    async with _client(address) as client:
        answer = await client.authz_stub.CheckCapability(_check())
        assert answer.allowed and answer.revision == 7
        assert servicer.calls["CheckCapability"] == 4
        assert client.retries == 3


async def test_write_without_request_id_is_sent_once(flapping):
    servicer, address = flapping
    servicer.failures = 1
    async with _client(address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.authz_stub.WriteRelationships(pb.WriteRelationshipsRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls["WriteRelationships"] == 1
        assert client.retries == 0


async def test_write_with_request_id_is_retried(flapping):
    servicer, address = flapping
    servicer.failures = 2
    async with _client(address) as client:
        answer = await client.authz_stub.WriteRelationships(pb.WriteRelationshipsRequest(request_id="req-1"))
        assert answer.revision == 8
        assert servicer.calls["WriteRelationships"] == 3


async def test_other_errors_are_not_retried(flapping):
    servicer, address = flapping
    servicer.failures, servicer.code = 1, grpc.StatusCode.INTERNAL
    async with _client(address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.authz_stub.CheckCapability(_check())
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert servicer.calls["CheckCapability"] == 1


async def test_attempts_are_bounded(flapping):
    servicer, address = flapping
    servicer.failures = 100
    async with _client(address, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.authz_stub.CheckCapability(_check())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls["CheckCapability"] == 3


async def test_deadline_covers_all_attempts(flapping):
    servicer, address = flapping
    servicer.failures = 10_000
    policy = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1)
    async with _client(address, retry=policy, timeout=0.4) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError):
            await client.authz_stub.CheckCapability(_check())
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, elapsed  # without the deadline: ~1000 attempts, minutes
        assert 2 <= servicer.calls["CheckCapability"] < 20
        # a per-call deadline overrides the client's default
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError):
            await client.authz_stub.CheckCapability(_check(), timeout=0.15)
        assert time.monotonic() - started < 1.0


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0)
    assert [policy.backoff(n, rng=lambda: 0.0) for n in (1, 2, 3, 4, 5, 6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [policy.backoff(n, rng=lambda: 1.0) for n in (1, 2, 5)] == [0.1, 0.2, 1.0]
    assert 0.1 <= policy.backoff(2) <= 0.2


def test_idempotency_rules():
    assert is_idempotent("/gatehouse.authz.v1.AuthzService/CheckCapability", pb.CheckCapabilityRequest())
    assert is_idempotent("/gatehouse.authz.v1.AuthzService/LookupResources", None)
    assert is_idempotent("/gatehouse.identity.v1.IdentityService/GetUser", None)
    assert not is_idempotent(
        "/gatehouse.authz.v1.AuthzService/WriteRelationships", pb.WriteRelationshipsRequest()
    )
    assert is_idempotent(
        "/gatehouse.authz.v1.AuthzService/WriteRelationships", pb.WriteRelationshipsRequest(request_id="r")
    )
    assert not is_idempotent("/gatehouse.identity.v1.IdentityService/RefreshSession", None)
    assert not is_idempotent("/gatehouse.identity.v1.IdentityService/Login", None)


async def test_bearer_token_and_trace_context_reach_the_server(flapping):
    servicer, address = flapping
    telemetry = setup_telemetry("client-test", "memory")
    async with _client(address, credentials=StaticToken("tok-123"), telemetry=telemetry) as client:
        with telemetry.tracer.start_as_current_span("caller") as span:
            await client.authz_stub.CheckCapability(_check())
            trace_id = f"{span.get_span_context().trace_id:032x}"
    seen = servicer.metadata[-1]
    assert seen["authorization"] == "Bearer tok-123"
    assert seen["traceparent"].split("-")[1] == trace_id
    names = [s.name for s in telemetry.span_exporter.get_finished_spans()]
    assert "/gatehouse.authz.v1.AuthzService/CheckCapability" in names


def test_addresses_from_the_environment():
    client = GatehouseClient.from_env({"GATEHOUSE_AUTHZ_ADDRESS": "10.0.0.5:7000"})
    assert client.addresses["authz"] == "10.0.0.5:7000"
    assert client.addresses["identity"] == "127.0.0.1:50051"
