"""The protos as the gateway sees them: a descriptor pool, message classes and comments.

Everything the gateway serves is derived from one ``FileDescriptorSet`` (written by
``make gen`` to ``libs/gatehouse/_descriptors.binpb`` with ``--include_source_info``),
so a newly annotated RPC appears without gateway code changes.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

import gatehouse

DEFAULT_DESCRIPTOR_SET = pathlib.Path(gatehouse.__file__).resolve().parent / "_descriptors.binpb"

# FileDescriptorProto / DescriptorProto field numbers used in SourceCodeInfo paths.
_MESSAGE_TYPE, _ENUM_TYPE, _SERVICE = 4, 5, 6
_FIELD, _NESTED_TYPE, _NESTED_ENUM = 2, 3, 4
_METHOD = 2
_ENUM_VALUE = 2


def load_descriptor_set(
    path: pathlib.Path | str = DEFAULT_DESCRIPTOR_SET,
) -> descriptor_pb2.FileDescriptorSet:
    """Read a ``FileDescriptorSet``; a missing file names ``make gen`` as the fix."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `make gen` to generate the descriptor set")
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


class Schema:
    """A descriptor pool built from file descriptors, with message classes and proto comments."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]):
        self.files = list(files)
        self.pool = descriptor_pool.DescriptorPool()
        for f in _dependency_order(self.files):
            self.pool.Add(f)
        self._classes: dict[str, type] = {}
        self._comments: dict[str, str] = {}
        for f in self.files:
            self._index_comments(f)

    @classmethod
    def from_descriptor_set(cls, fds: descriptor_pb2.FileDescriptorSet) -> Schema:
        return cls(fds.file)

    def message_class(self, desc: descriptor.Descriptor) -> type:
        cls = self._classes.get(desc.full_name)
        if cls is None:
            cls = self._classes[desc.full_name] = message_factory.GetMessageClass(desc)
        return cls

    def comment(self, full_name: str) -> str:
        """The leading (or trailing) comment of a service, method, message, field, enum or enum value."""
        return self._comments.get(full_name, "")

    def _index_comments(self, f: descriptor_pb2.FileDescriptorProto) -> None:
        by_path = {}
        for loc in f.source_code_info.location:
            text = (loc.leading_comments or loc.trailing_comments).strip()
            if text:
                by_path[tuple(loc.path)] = _clean_comment(text)
        if not by_path:
            return
        prefix = f.package + "." if f.package else ""
        for si, svc in enumerate(f.service):
            self._put(by_path, (_SERVICE, si), prefix + svc.name)
            for mi, m in enumerate(svc.method):
                self._put(by_path, (_SERVICE, si, _METHOD, mi), f"{prefix}{svc.name}.{m.name}")
        for ei, enum in enumerate(f.enum_type):
            self._index_enum(by_path, (_ENUM_TYPE, ei), prefix + enum.name, enum)
        for mi, msg in enumerate(f.message_type):
            self._index_message(by_path, (_MESSAGE_TYPE, mi), prefix + msg.name, msg)

    def _index_message(self, by_path, path, name, msg: descriptor_pb2.DescriptorProto) -> None:
        self._put(by_path, path, name)
        for fi, field in enumerate(msg.field):
            self._put(by_path, (*path, _FIELD, fi), f"{name}.{field.name}")
        for ni, nested in enumerate(msg.nested_type):
            self._index_message(by_path, (*path, _NESTED_TYPE, ni), f"{name}.{nested.name}", nested)
        for ei, enum in enumerate(msg.enum_type):
            self._index_enum(by_path, (*path, _NESTED_ENUM, ei), f"{name}.{enum.name}", enum)

    def _index_enum(self, by_path, path, name, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        self._put(by_path, path, name)
        for vi, value in enumerate(enum.value):
            self._put(by_path, (*path, _ENUM_VALUE, vi), f"{name}.{value.name}")

    def _put(self, by_path, path, name) -> None:
        if path in by_path:
            self._comments[name] = by_path[path]


def _clean_comment(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if not line.startswith("buf:lint")).strip()


def _dependency_order(files: list[descriptor_pb2.FileDescriptorProto]) -> list:
    """Files ordered so each comes after its dependencies (a pool rejects the other order)."""
    by_name = {f.name: f for f in files}
    ordered, seen = [], set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        seen.add(name)
        for dep in by_name[name].dependency:
            visit(dep)
        ordered.append(by_name[name])

    for f in files:
        visit(f.name)
    return ordered
