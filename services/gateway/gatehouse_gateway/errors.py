"""gRPC status → HTTP status and the JSON error body ``{code, message, details}``.

The mapping is grpc-gateway's (``runtime.HTTPStatusFromCode``); ``details`` are the
``google.rpc`` details of the backend's ``grpc-status-details-bin`` trailer
(``BadRequest`` field violations, ``ErrorInfo`` reasons, ``RetryInfo``) as JSON
with ``@type``.
"""

from __future__ import annotations

import json
import math

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# grpc-gateway v2 runtime.HTTPStatusFromCode
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Messages of statuses the transport produced itself (no backend answer): never leak
# backend addresses or library internals to the HTTP client.
_TRANSPORT_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time",
    grpc.StatusCode.CANCELLED: "the call was cancelled",
}


class HttpError(Exception):
    """An error the gateway answers itself (bad input, no route, body too large)."""

    def __init__(
        self,
        http_status: int,
        message: str,
        *,
        code: int = code_pb2.INVALID_ARGUMENT,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.code = code
        self.field = field
        self.headers = headers or {}

    def body(self) -> bytes:
        status = status_pb2.Status(code=self.code, message=self.message)
        if self.field is not None:
            status.details.add().Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
        return status_json(status)


def bad_request(message: str, field: str | None = None) -> HttpError:
    return HttpError(400, message, field=field)


def status_json(status: status_pb2.Status) -> bytes:
    """``{code, message, details}``; details always present (an empty list when none)."""
    body = {"code": status.code, "message": status.message}
    body["details"] = json_format.MessageToDict(status).get("details", [])
    return json.dumps(body, separators=(",", ":")).encode()


def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a failed call: the backend's rich status, or one built from the code."""
    try:
        rich = rpc_status.from_call(err)
    except ValueError:  # code/message of the trailer disagree with the call's: trust the call
        rich = None
    if rich is not None:
        return rich
    code = err.code()
    message = err.details() or code.name
    if code in _TRANSPORT_MESSAGES and not _answered_by_backend(err):
        message = _TRANSPORT_MESSAGES[code]
    return status_pb2.Status(code=code.value[0], message=message)


def _answered_by_backend(err: grpc.aio.AioRpcError) -> bool:
    """Gatehouse servers always send ``x-request-id`` in trailers; the transport does not."""
    return any(key == "x-request-id" for key, _ in err.trailing_metadata() or ())


def http_status_of(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def retry_after_seconds(status: status_pb2.Status) -> int | None:
    """Seconds for ``Retry-After``: ``RetryInfo.retry_delay``, else ``ErrorInfo`` metadata ``retry_after_seconds``."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(1, math.ceil(delay))
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            value = info.metadata.get("retry_after_seconds")
            if value:
                try:
                    return max(1, math.ceil(float(value)))
                except ValueError:
                    return None
    return None
