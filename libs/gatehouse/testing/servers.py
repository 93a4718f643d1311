"""Helpers for kit tests: a real GatehouseServer on 127.0.0.1:0 with a raw test service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from gatehouse.kit.config import Settings
from gatehouse.kit.server import GatehouseServer, ServiceSpec

TEST_SERVICE = "gatehouse.test.v1.ProbeService"


def settings_for(tmp_path, service: str = "identity", **extra: str) -> Settings:
    env = {"GATEHOUSE_LISTEN_ADDRESS": "127.0.0.1:0", "GATEHOUSE_DATA_DIR": str(tmp_path)}
    env.update({f"GATEHOUSE_{k.upper()}": v for k, v in extra.items()})
    return Settings.from_env(service, env)


def raw_service(methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]]):
    """A generic unary service with bytes in and out (no proto needed)."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TEST_SERVICE, handlers),))

    return register


def make_server(tmp_path, register, *, verifier, public=(), on_start=(), depends_on=(), **settings_extra):
    spec = ServiceSpec(
        name="probe",
        service_names=[TEST_SERVICE],
        register=register,
        public_methods=[f"/{TEST_SERVICE}/{m}" for m in public],
        on_start=list(on_start),
        depends_on=depends_on,
    )
    return GatehouseServer(settings_for(tmp_path, **settings_extra), spec, verifier=verifier)


async def call(port: int, method: str, payload: bytes = b"", metadata=(), timeout: float = 5.0):
    """Unary call returning (response, trailing metadata); raises AioRpcError."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary(f"/{TEST_SERVICE}/{method}")
        call_ = rpc(payload, metadata=metadata, timeout=timeout)
        response = await call_
        return response, await call_.trailing_metadata()
