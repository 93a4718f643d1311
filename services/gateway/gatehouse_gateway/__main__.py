"""``python -m gatehouse_gateway`` (or ``gatehouse-gateway``): run the HTTP/JSON gateway."""

from __future__ import annotations

import sys


def main() -> int:
    from gatehouse_gateway.server import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
