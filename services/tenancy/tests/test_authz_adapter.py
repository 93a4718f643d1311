"""Tenancy's authz adapter refuses an answer it would have to cut short.

The authz here is a stand-in gRPC server whose pages never end: a real authz cannot be made to
answer more than 100 pages of 1,000 in a unit test.
"""

from __future__ import annotations

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse_tenancy.adapters.authz import AuthzClient


class EndlessPages(authz_service_pb2_grpc.AuthzServiceServicer):
    def __init__(self):
        self.calls = 0

    async def LookupResources(self, request, context):
        self.calls += 1
        return apb.LookupResourcesResponse(resource_ids=[f"w{self.calls}"], next_page_token="more")

    async def ReadRelationships(self, request, context):
        self.calls += 1
        return apb.ReadRelationshipsResponse(next_page_token="more")


async def test_more_than_100_pages_is_refused_not_truncated():
    servicer = EndlessPages()
    server = grpc.aio.server()
    authz_service_pb2_grpc.add_AuthzServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = AuthzClient(channel, timeout=5.0, token_source=None)
            with pytest.raises(errors.Unavailable):
                await client.lookup(Principal("user", "u"), "workspace", "chat")
            assert servicer.calls == 100
            with pytest.raises(errors.Unavailable):
                await client.read(resource_type="workspace")
            assert servicer.calls == 200
    finally:
        await server.stop(0)
