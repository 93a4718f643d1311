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
        answer = await stub.GetJwks(identity_service_pb2.GetJwksRequest(), timeout=timeout)
        return [
            {k: v for k, v in json_format.MessageToDict(key, preserving_proto_field_name=True).items() if v}
            for key in answer.keys
        ]

    return fetch


def identity_token_verifier(settings: Settings, channel: grpc.aio.Channel) -> Verifier:
    """The default verifier: JWTs checked locally against identity's JWKS (cached, kid rotation)."""
    from gatehouse.kit.auth import JwksCache, TokenVerifier

    verifier = TokenVerifier(
        JwksCache(jwks_fetcher(channel)),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    return verifier.verify
