"""``python -m gatehouse_gateway`` (or ``gatehouse-gateway``): run the HTTP/JSON gateway."""

from __future__ import annotations

import sys

from gatehouse.kit.grpc_settings import apply_grpc_defaults

apply_grpc_defaults()  # before grpc is imported: grpc core reads its settings once, at import


def main() -> int:
    from gatehouse_gateway.server import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
