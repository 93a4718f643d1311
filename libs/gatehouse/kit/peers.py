"""Adapters from the kit to other Gatehouse services over gRPC."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from gatehouse.kit.config import Settings
from gatehouse.kit.context import Principal
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


class IdentityVerifier:
    """Access tokens checked locally against identity's JWKS (kit TokenVerifier, ``kid``
    rotation) and — given a service token source — refused once their session is revoked
    (logout, password change), from 1 s polls of identity's ``ListRevocations``."""

    def __init__(
        self,
        identity_channel: grpc.aio.Channel,
        *,
        issuer: str = "gatehouse",
        audience: str = "gatehouse",
        token_source=None,
        revocation_interval: float = 1.0,
    ):
        from gatehouse.kit.auth import JwksCache, RevocationPoller, TokenVerifier

        self.poller = None
        if token_source is not None:
            self.poller = RevocationPoller(
                revocations_fetcher(identity_channel, token_source), interval=revocation_interval
            )
        self._verifier = TokenVerifier(
            JwksCache(jwks_fetcher(identity_channel)),
            issuer=issuer,
            audience=audience,
            is_revoked=self.poller.is_revoked if self.poller else None,
        )
        self.verify = self._verifier.verify  # the bound method: no extra layer on the hot path

    async def __call__(self, token: str) -> Principal:
        return await self._verifier.verify(token)

    async def close(self) -> None:
        if self.poller is not None:
            await self.poller.stop()


def identity_token_verifier(settings: Settings, channel: grpc.aio.Channel, token_source=None) -> Verifier:
    """The services' default verifier: an :class:`IdentityVerifier` that polls revocations with
    this process's service token (from its credentials unless ``token_source`` is given)."""
    from gatehouse.kit.service_auth import ServiceTokenSource, identity_token_fetch, load_credentials

    if token_source is None:
        token_source = ServiceTokenSource(
            identity_token_fetch(channel, lambda: load_credentials(settings.data_dir, settings.service))
        )
    return IdentityVerifier(
        channel, issuer=settings.token_issuer, audience=settings.token_audience, token_source=token_source
    ).verify
