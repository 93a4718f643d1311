"""One way to wrap a grpc.aio method handler, used by every server interceptor.

grpc.aio server interceptors only see the handler lookup; to act around the call
itself an interceptor returns a new handler whose behaviour runs inside a scope.
:func:`wrap_handler` does that for all four call shapes, so each interceptor is
just an async context manager factory. The wrapping itself is meant to happen once
per method (see :class:`gatehouse.kit.interceptors.KitInterceptor`, which caches it), not
per call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc

ScopeFactory = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager]


async def _call_unary(inner, request, context):
    result = inner(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _iterate(inner, request, context):
    result = inner(request, context)
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif result is not None:
        for item in result:
            yield item


def _unary(inner, scope: ScopeFactory):
    """A unary-answer behaviour run inside ``scope``: one coroutine frame when ``inner`` is async."""
    if inspect.iscoroutinefunction(inner):

        async def call(request, context):
            async with scope(context):
                return await inner(request, context)

        return call

    async def call_any(request, context):
        async with scope(context):
            return await _call_unary(inner, request, context)

    return call_any


def wrap_handler(handler: grpc.RpcMethodHandler | None, scope: ScopeFactory) -> grpc.RpcMethodHandler | None:
    """Return ``handler`` with its behaviour run inside ``scope(context)``."""
    if handler is None:
        return None
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, scope), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, scope), **kwargs)
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def unary_stream(request, context):
            async with scope(context):
                async for item in _iterate(inner, request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    inner = handler.stream_stream

    async def stream_stream(request_iterator, context):
        async with scope(context):
            async for item in _iterate(inner, request_iterator, context):
                yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of invocation metadata ``key`` (lower-case), or None."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None
