"""The one mapping from domain errors to gRPC status with ``google.rpc`` details.

STYLE.md's table, as code: each :class:`~gatehouse.kit.errors.GatehouseError`
subclass names its code; field violations become ``google.rpc.BadRequest``, a
reason becomes ``google.rpc.ErrorInfo`` (domain ``gatehouse``), a retry-after
becomes ``google.rpc.RetryInfo``. Anything unexpected is ``INTERNAL`` with a
generic message (the detail goes to the log with the trace id, never to the client).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gatehouse.kit import errors

ERROR_DOMAIN = "gatehouse"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
INTERNAL_MESSAGE = "internal error"


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` for an exception raised by a handler."""
    if not isinstance(exc, errors.GatehouseError):
        return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    code = getattr(code_pb2, exc.code)
    details = []
    if isinstance(exc, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in exc.violations
                    ]
                )
            )
        )
    if exc.reason:
        details.append(
            _pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata))
        )
    if isinstance(exc, errors.ResourceExhausted):
        seconds = int(exc.metadata["retry_after_seconds"])
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))))
    return status_pb2.Status(code=code, message=exc.message, details=details)


def to_grpc_status(rpc_status: status_pb2.Status, extra_trailing: tuple = ()) -> grpc.Status:
    """A ``grpc.Status`` for ``context.abort_with_status`` carrying the details and extra trailers."""

    class _Status(grpc.Status):
        pass

    out = _Status()
    out.code = grpc.StatusCode[code_pb2.Code.Name(rpc_status.code)]
    out.details = rpc_status.message
    out.trailing_metadata = ((STATUS_DETAILS_KEY, rpc_status.SerializeToString()), *extra_trailing)
    return out


def status_from_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """Parse the ``google.rpc.Status`` a Gatehouse server attached to a failed call (client side)."""
    trailing = err.trailing_metadata() or ()
    for key, value in trailing:
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` detail of a failed call, if any."""
    return _detail(err, error_details_pb2.ErrorInfo)


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest | None:
    """The ``BadRequest`` detail of a failed call, if any."""
    return _detail(err, error_details_pb2.BadRequest)


def retry_info(err: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    return _detail(err, error_details_pb2.RetryInfo)


def _detail(err, cls):
    st = status_from_error(err)
    if st is None:
        return None
    for d in st.details:
        if d.Is(cls.DESCRIPTOR):
            msg = cls()
            d.Unpack(msg)
            return msg
    return None
