"""Fixtures of the authz service tests."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.testing.tokens import TokenMint
from services.authz.tests.helpers import start_authz


@pytest.fixture
async def authz(tmp_path, database_url):
    mint = TokenMint()
    server, port = await start_authz(tmp_path, database_url, mint)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = authz_service_pb2_grpc.AuthzServiceStub(channel)
    svc = mint.md(mint.service())
    yield stub, mint, svc, database_url
    await channel.close()
    await server.stop(0)
