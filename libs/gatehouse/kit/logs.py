"""Structured logs: one JSON object per line on stderr, with request id and trace id.

Fields: ``ts`` (RFC 3339 UTC), ``level``, ``logger``, ``service``, ``msg``,
``request_id`` (from the request context), ``trace_id`` / ``span_id`` (the
current span, :func:`gatehouse.kit.telemetry.current_span`), any ``extra=`` fields, and ``exc`` for exceptions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from gatehouse.kit.context import request_id_var
from gatehouse.kit.telemetry import current_span

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_HANDLER_MARK = "_gatehouse_handler"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        ctx = current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = f"{ctx.trace_id:032x}"
            entry["span_id"] = f"{ctx.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = json.loads(super().format(record))
        head = f"{entry.pop('ts')} {entry.pop('level'):<7} {entry.pop('service')} {entry.pop('msg')}"
        entry.pop("logger", None)
        exc = entry.pop("exc", None)
        tail = " ".join(f"{k}={v}" for k, v in entry.items())
        return head + (f"  {tail}" if tail else "") + (f"\n{exc}" if exc else "")


def setup_logging(service: str, level: str = "INFO", fmt: str = "json", stream=None) -> logging.Handler:
    """Configure the root logger once (calling again replaces the Gatehouse handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
