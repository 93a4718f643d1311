"""grpc core settings of a Gatehouse process, applied before grpc is imported.

grpc core reads its environment (``GRPC_EXPERIMENTS`` among others) once, when the ``grpc``
package is first imported; a setting made later has no effect. So each service's entry point
(``python -m gatehouse_<service>``, and the gateway's) calls :func:`apply_grpc_defaults` before
anything imports grpc, and so does the test suite's root ``conftest.py`` (the tests run the
servers and their clients as production does). This module must not import grpc itself.

``GRPC_EXPERIMENTS=-event_engine_listener,-event_engine_client``: grpcio 1.85 accepts
connections with the EventEngine listener and opens them with the EventEngine client, and such
connections do their reads and writes on EventEngine worker threads, so every call hops between
those threads and the asyncio loop's thread. With the two experiments off (grpc's documented
switch for them) a connection's I/O is done by the poller thread grpc.aio already runs.
Measured on a 2-core machine, 32 calls in flight (docs/decisions.md): a no-op grpc.aio unary
call costs 196 instead of 221 µs of server CPU, CheckCapability 264 instead of 304 µs, the
loop thread's context switches per call fall from ≈ 5 to under 1, and a caller spends 145
instead of 188 µs per call. An operator who sets ``GRPC_EXPERIMENTS`` (even empty) keeps their
value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

GRPC_DEFAULTS = {"GRPC_EXPERIMENTS": "-event_engine_listener,-event_engine_client"}


def apply_grpc_defaults(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set :data:`GRPC_DEFAULTS` in ``environ`` (the process environment) where not already set.

    Returns False when grpc was already imported, in which case grpc core has read its settings
    and these take effect only in child processes."""
    environ = os.environ if environ is None else environ
    for name, value in GRPC_DEFAULTS.items():
        environ.setdefault(name, value)
    return "grpc" not in sys.modules
