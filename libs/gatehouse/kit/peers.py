"""Adapters from the kit to other Gatehouse services over gRPC."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from gatehouse.kit.config import Settings
from gatehouse.kit.interceptors import Verifier


def jwks_fetcher(channel: grpc.aio.Channel, timeout: float = 2.0):
    """An async callable returning identity's public keys as JWK dicts (``GetJwks``)."""
    from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc

    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def fetch() -> list[dict]:
        # wait_for_ready: right after start-up the channel may still be backing off from a refused
        # connection; waiting (within the timeout) beats failing and then not refetching for a while.
        answer = await stub.GetJwks(
            identity_service_pb2.GetJwksRequest(), timeout=timeout, wait_for_ready=True
        )
        return [
            {k: v for k, v in json_format.MessageToDict(key, preserving_proto_field_name=True).items() if v}
            for key in answer.keys
        ]

    return fetch


def revocations_fetcher(
    channel: grpc.aio.Channel, token_source, *, timeout: float = 2.0, page_size: int = 5000
):
    """An async ``fetch(after_sequence)`` over identity's ``ListRevocations`` (service token required)."""
    from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc

    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def fetch(after: int) -> list[tuple[str, float, int]]:
        out: list[tuple[str, float, int]] = []
        for _ in range(100):  # bounded: at most 100 pages per poll
            token = await token_source()
            try:
                answer = await stub.ListRevocations(
                    identity_service_pb2.ListRevocationsRequest(after_sequence=after, page_size=page_size),
                    timeout=timeout,
                    metadata=(("authorization", f"Bearer {token}"),),
                    wait_for_ready=True,  # as GetJwks: ride out the channel's reconnect back-off
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and hasattr(token_source, "invalidate"):
                    token_source.invalidate()
                raise
            out += [(r.session_id, r.expire_time.ToSeconds(), r.sequence) for r in answer.revocations]
            if len(answer.revocations) < page_size:
                break
            after = answer.last_sequence
        return out

    return fetch


def identity_token_verifier(settings: Settings, channel: grpc.aio.Channel, token_source=None) -> Verifier:
    """The default verifier: JWTs checked locally against identity's JWKS (cached, kid rotation),
    refusing revoked sessions from a :class:`~gatehouse.kit.auth.RevocationPoller` (1 s polls of
    ``ListRevocations`` with this process's service token)."""
    from gatehouse.kit.auth import JwksCache, RevocationPoller, TokenVerifier
    from gatehouse.kit.service_auth import ServiceTokenSource, identity_token_fetch, load_credentials

    if token_source is None:
        token_source = ServiceTokenSource(
            identity_token_fetch(channel, lambda: load_credentials(settings.data_dir, settings.service))
        )
    poller = RevocationPoller(revocations_fetcher(channel, token_source), interval=1.0)
    verifier = TokenVerifier(
        JwksCache(jwks_fetcher(channel)),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        is_revoked=poller.is_revoked,
    )
    return verifier.verify
