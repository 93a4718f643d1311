"""Generic HTTP/JSON ⇄ gRPC transcoding from ``google.api.http`` rules.

:class:`RouteTable` reads every annotated unary RPC (and its ``additional_bindings``)
from the descriptors; :meth:`Route.build_request` maps path parameters, query
parameters and the JSON body onto the request message with protobuf's JSON
mapping; :meth:`Route.render` maps the response back (camelCase names). Nothing
here knows a particular service.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, json_format

from gatehouse_gateway.descriptors import Schema
from gatehouse_gateway.errors import HttpError, bad_request

FD = descriptor.FieldDescriptor
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
FIELD_MASK = "google.protobuf.FieldMask"
# Well-known types whose JSON form is a scalar string (settable from a path or query value).
STRING_WKTS = {"google.protobuf.Timestamp", "google.protobuf.Duration", FIELD_MASK}
WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}
# Well-known types with a special JSON form: never walked as ordinary messages.
SPECIAL_JSON = (
    STRING_WKTS
    | WRAPPERS
    | {
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.Empty",
    }
)
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


class RouteConfigError(ValueError):
    """An ``google.api.http`` rule the gateway cannot serve (bad template or unknown field)."""


# --------------------------------------------------------------------------- path templates


@dataclass(frozen=True)
class PathTemplate:
    """A compiled ``google.api.http`` path template (``/v1/{user.id}/x/*:verb``)."""

    template: str
    regex: re.Pattern
    variables: tuple[str, ...]  # field paths, in capture-group order
    literals: int  # literal segments (more = more specific)
    verb: str

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        return {var: urllib.parse.unquote(m.group(i + 1)) for i, var in enumerate(self.variables)}

    @property
    def openapi_path(self) -> str:
        """The template with every variable as ``{field.path}`` (what OpenAPI documents)."""
        return re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", self.template)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside braces."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _segment_regex(segment: str, in_variable: bool) -> str:
    if segment == "*":
        return "[^/]+"
    if segment == "**":
        return ".+"
    if not segment or "{" in segment or "}" in segment or (in_variable and "=" in segment):
        raise RouteConfigError(f"bad path segment {segment!r}")
    return re.escape(segment)


def parse_template(template: str) -> PathTemplate:
    if not template.startswith("/"):
        raise RouteConfigError(f"path template {template!r} must start with '/'")
    body = template[1:]
    verb = ""
    segments = _split(body, "/")
    last = _split(segments[-1], ":")
    if len(last) > 1 and segments[-1].rfind(":") > segments[-1].rfind("}"):
        verb = last[-1]
        segments[-1] = segments[-1][: -(len(verb) + 1)]
    pattern, variables, literals = [], [], 0
    for seg in segments:
        if seg.startswith("{") and seg.endswith("}"):
            name, _, inner = seg[1:-1].partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
                raise RouteConfigError(f"bad variable {seg!r} in {template!r}")
            inner_segments = inner.split("/") if inner else ["*"]
            inner_regex = "/".join(_segment_regex(s, True) for s in inner_segments)
            variables.append(name)
            pattern.append(f"({inner_regex})")
        else:
            pattern.append(_segment_regex(seg, False))
            literals += seg not in ("*", "**")
    regex = "^/" + "/".join(pattern) + (":" + re.escape(verb) if verb else "") + "$"
    return PathTemplate(template, re.compile(regex), tuple(variables), literals, verb)


# --------------------------------------------------------------------------- field helpers

_FIELDS_CACHE: dict[descriptor.Descriptor, dict[str, FD]] = {}  # per descriptor (pools may differ)


def fields_of(desc: descriptor.Descriptor) -> dict[str, FD]:
    """Fields by proto name and by JSON (camelCase) name."""
    found = _FIELDS_CACHE.get(desc)
    if found is None:
        found = {}
        for f in desc.fields:
            found[f.name] = f
            found[f.json_name] = f
        _FIELDS_CACHE[desc] = found
    return found


def is_repeated(f: FD) -> bool:
    return f.is_repeated


def is_map(f: FD) -> bool:
    return is_repeated(f) and f.message_type is not None and f.message_type.GetOptions().map_entry


def resolve_path(desc: descriptor.Descriptor, path: str) -> list[FD]:
    """The fields along a dotted path (proto or JSON names); KeyError naming the first unknown part."""
    chain = []
    current = desc
    for part in path.split("."):
        if current is None:
            raise KeyError(path)
        f = fields_of(current).get(part)
        if f is None:
            raise KeyError(path)
        chain.append(f)
        current = f.message_type if f.type == FD.TYPE_MESSAGE and not is_repeated(f) else None
    return chain


def _proto_path(chain: list[FD]) -> str:
    return ".".join(f.name for f in chain)


def _set(data: dict, chain: list[FD], value) -> None:
    """Put ``value`` at ``chain`` into a JSON dict, replacing any value under the other name."""
    for f in chain[:-1]:
        nested = data.pop(f.name, None) if f.name != f.json_name else None
        nested = data.get(f.json_name, nested)
        if not isinstance(nested, dict):
            nested = {}
        data[f.json_name] = nested
        data = nested
    last = chain[-1]
    if last.name != last.json_name:
        data.pop(last.name, None)
    data[last.json_name] = value


def _scalar_from_text(f: FD, text: str, where: str):
    """A path or query string as the JSON value of field ``f``."""
    if f.type == FD.TYPE_BOOL:
        if text.lower() not in _BOOLS:
            raise bad_request(f"{where}: {text!r} is not a boolean (true or false)", field=where)
        return _BOOLS[text.lower()]
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        try:
            return float(text)
        except ValueError:
            raise bad_request(f"{where}: {text!r} is not a number", field=where) from None
    if f.type == FD.TYPE_MESSAGE:
        name = f.message_type.full_name
        if name in STRING_WKTS:
            return text
        if name in WRAPPERS:
            return _scalar_from_text(f.message_type.fields_by_name["value"], text, where)
        raise bad_request(f"{where}: a message field cannot be set from a URL value", field=where)
    return text  # strings, bytes, integers (JSON mapping accepts decimal strings), enums


def _enum_value(enum: descriptor.EnumDescriptor, value):
    """Accept the short form of enum names: ``admin`` for ``WORKSPACE_ROLE_ADMIN``."""
    if not isinstance(value, str) or value in enum.values_by_name:
        return value
    names = [v.name for v in enum.values]
    prefix = _common_prefix(names)
    candidate = prefix + value.upper().replace("-", "_")
    return candidate if candidate in enum.values_by_name else value


_PREFIX_CACHE: dict[tuple, str] = {}


def _common_prefix(names: list[str]) -> str:
    key = tuple(names)
    found = _PREFIX_CACHE.get(key)
    if found is None:
        found = ""
        if names:
            first = names[0]
            cut = first.rfind("_", 0, len(first)) + 1
            while cut > 0 and not all(n.startswith(first[:cut]) for n in names):
                cut = first.rfind("_", 0, cut - 1) + 1
            found = first[:cut]
        _PREFIX_CACHE[key] = found
    return found


def normalize_enums(data, desc: descriptor.Descriptor) -> None:
    """Rewrite short enum names in a JSON object for ``desc`` in place (recursively)."""
    if not isinstance(data, dict) or desc.full_name in SPECIAL_JSON:
        return
    fields = fields_of(desc)
    for key, value in data.items():
        f = fields.get(key)
        if f is None or is_map(f):
            continue
        if f.type == FD.TYPE_ENUM:
            if isinstance(value, list):
                data[key] = [_enum_value(f.enum_type, v) for v in value]
            else:
                data[key] = _enum_value(f.enum_type, value)
        elif f.type == FD.TYPE_MESSAGE:
            for item in value if isinstance(value, list) else [value]:
                normalize_enums(item, f.message_type)


def present_paths(data: dict, desc: descriptor.Descriptor, prefix: str = "") -> list[str]:
    """Field-mask paths (proto names) of the fields present in a JSON object, leaves first-level deep."""
    paths = []
    fields = fields_of(desc)
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            continue
        path = prefix + f.name
        if (
            f.type == FD.TYPE_MESSAGE
            and not is_repeated(f)
            and f.message_type.full_name not in SPECIAL_JSON
            and isinstance(value, dict)
            and value
        ):
            paths.extend(present_paths(value, f.message_type, path + "."))
        else:
            paths.append(path)
    return paths


# --------------------------------------------------------------------------- routes


@dataclass
class Route:
    http_method: str  # upper case
    template: PathTemplate
    body: str  # "" (no body), "*" or a field path
    method: descriptor.MethodDescriptor
    grpc_path: str  # /package.Service/Method
    address: str
    request_class: type
    response_class: type
    binding: int  # 0 for the main rule, 1.. for additional_bindings
    response_body: str = ""
    path_chains: list = field(default_factory=list)
    body_chain: list = field(default_factory=list)
    mask_field: FD | None = None
    bound: frozenset = frozenset()  # proto paths bound by path variables
    pool: object = None

    @property
    def service(self) -> descriptor.ServiceDescriptor:
        return self.method.containing_service

    def build_request(self, path_vars: Mapping[str, str], query: Mapping[str, list[str]], raw_body: bytes):
        """The request message for this route; :class:`HttpError` (400) on bad input."""
        try:
            return self._build(path_vars, query, raw_body)
        except RecursionError:  # a recursive message type nested absurdly deep by the client
            raise bad_request("the request body is nested too deeply") from None

    def _build(self, path_vars: Mapping[str, str], query: Mapping[str, list[str]], raw_body: bytes):
        desc = self.method.input_type
        data: dict = {}
        body_value = None
        if self.body:
            body_value = _decode_body(raw_body)
            if self.body == "*":
                if not isinstance(body_value, dict):
                    raise bad_request("the request body must be a JSON object")
                data = body_value
            else:
                _set(data, self.body_chain, body_value)
        for var, chain in zip(self.template.variables, self.path_chains, strict=True):
            _set(data, chain, _scalar_from_text(chain[-1], path_vars[var], var))
        if query:
            self._apply_query(data, query)
        normalize_enums(data, desc)
        message = self.request_class()
        try:
            json_format.ParseDict(data, message, ignore_unknown_fields=False, descriptor_pool=self.pool)
        except json_format.ParseError as exc:
            raise _parse_error(exc) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise bad_request(f"the request does not match {desc.name}: {exc}") from None
        if self.mask_field is not None and not message.HasField(self.mask_field.name):
            self._derive_mask(message, body_value)
        return message

    def _apply_query(self, data: dict, query: Mapping[str, list[str]]) -> None:
        desc = self.method.input_type
        for key, values in query.items():
            if self.body == "*":
                raise bad_request(
                    f"query parameter {key!r} is not allowed: the JSON body carries the whole request",
                    field=key,
                )
            try:
                chain = resolve_path(desc, key)
            except KeyError:
                raise bad_request(f"unknown query parameter {key!r} for {desc.name}", field=key) from None
            path = _proto_path(chain)
            if path in self.bound or (self.body and path.split(".")[0] == self.body_chain[0].name):
                raise bad_request(f"query parameter {key!r} is already set by the path or body", field=key)
            last = chain[-1]
            if is_map(last):
                raise bad_request(
                    f"query parameter {key!r}: map fields cannot be set from the URL", field=key
                )
            if is_repeated(last):
                value = [_scalar_from_text(last, v, key) for v in values]
            else:
                if len(values) > 1:
                    raise bad_request(
                        f"query parameter {key!r} is not repeated but given {len(values)} times"
                    )
                value = _scalar_from_text(last, values[0], key)
            _set(data, chain, value)

    def _derive_mask(self, message, body_value) -> None:
        """PUT/PATCH with a resource body and no mask: update only the fields present in the body."""
        if not isinstance(body_value, dict):
            body_value = {}  # `null`: nothing named, so nothing to update (never a full replace)
        target = self.body_chain[-1].message_type
        prefix = _proto_path(self.body_chain) + "."
        paths = [p for p in present_paths(body_value, target) if prefix + p not in self.bound]
        if not paths:
            raise bad_request(
                f"the request body names no field of {target.name} to update",
                field=self.body_chain[-1].json_name,
            )
        getattr(message, self.mask_field.name).paths.extend(paths)

    def render(self, response) -> bytes:
        if self.response_body:
            for name in self.response_body.split("."):
                response = getattr(response, name)
        body = json_format.MessageToDict(
            response, always_print_fields_with_no_presence=True, descriptor_pool=self.pool
        )
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _decode_body(raw: bytes):
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None


_PARSE_PREFIX = re.compile(r"Failed to parse (\w+) field: ")
MAX_SHOWN_DEPTH = 8


def _parse_error(exc: json_format.ParseError) -> HttpError:
    """protobuf's nested "Failed to parse a field: Failed to parse b field: …" as ``field a.b: …``."""
    text = " ".join(str(exc).split())
    path = []
    while m := _PARSE_PREFIX.match(text):
        path.append(m.group(1))
        text = text[m.end() :]
    text = text.rstrip(".") + "."
    if not path:
        return bad_request(text)
    field = ".".join(path)
    if len(path) > MAX_SHOWN_DEPTH:
        field = ".".join(path[:3]) + f".… ({len(path)} levels)"
    return bad_request(f"field {field}: {text}", field=field)


def _rule_bindings(rule: http_pb2.HttpRule):
    yield rule
    yield from rule.additional_bindings


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


Resolver = Callable[[descriptor.ServiceDescriptor], "str | None"]


class RouteTable:
    """Every HTTP route of the annotated unary RPCs whose service ``resolve`` maps to an address."""

    def __init__(self, schema: Schema, resolve: Resolver):
        self.schema = schema
        self.routes: list[Route] = []
        self.skipped: list[str] = []  # methods with a rule the gateway does not serve, and why
        for f in schema.files:
            for svc_proto in f.service:
                svc = schema.pool.FindServiceByName(
                    f"{f.package}.{svc_proto.name}" if f.package else svc_proto.name
                )
                for m_proto in svc_proto.method:
                    if not m_proto.options.HasExtension(annotations_pb2.http):
                        continue
                    rule = m_proto.options.Extensions[annotations_pb2.http]
                    method = svc.methods_by_name[m_proto.name]
                    if m_proto.client_streaming or m_proto.server_streaming:
                        self.skipped.append(f"{method.full_name}: streaming RPCs are not transcoded")
                        continue
                    address = resolve(svc)
                    if address is None:
                        self.skipped.append(f"{method.full_name}: no backend address for {svc.full_name}")
                        continue
                    for i, binding in enumerate(_rule_bindings(rule)):
                        self.routes.append(self._route(binding, i, method, address))
        self.routes.sort(
            key=lambda r: (r.template.verb == "", -r.template.literals, -len(r.template.template))
        )
        self._by_method: dict[str, list[Route]] = {}
        for r in self.routes:
            self._by_method.setdefault(r.http_method, []).append(r)

    def _route(self, rule: http_pb2.HttpRule, index: int, method, address: str) -> Route:
        pattern = _pattern(rule)
        if pattern is None:
            raise RouteConfigError(f"{method.full_name}: http rule without a pattern")
        http_method, path = pattern
        template = parse_template(path)
        desc = method.input_type
        try:
            path_chains = [resolve_path(desc, v) for v in template.variables]
            body_chain = resolve_path(desc, rule.body) if rule.body not in ("", "*") else []
        except KeyError as exc:
            raise RouteConfigError(
                f"{method.full_name}: {path}: no field {exc.args[0]!r} in {desc.name}"
            ) from None
        for chain in path_chains:
            if is_repeated(chain[-1]) or (
                chain[-1].type == FD.TYPE_MESSAGE and chain[-1].message_type.full_name not in STRING_WKTS
            ):
                raise RouteConfigError(f"{method.full_name}: {path}: path variables must be scalar fields")
        mask = desc.fields_by_name.get("update_mask")
        mask_field = (
            mask
            if mask is not None
            and mask.type == FD.TYPE_MESSAGE
            and mask.message_type.full_name == FIELD_MASK
            and body_chain
            and body_chain[-1].type == FD.TYPE_MESSAGE
            and not is_repeated(body_chain[-1])
            else None
        )
        return Route(
            http_method=http_method,
            template=template,
            body=rule.body,
            method=method,
            grpc_path=f"/{method.containing_service.full_name}/{method.name}",
            address=address,
            request_class=self.schema.message_class(desc),
            response_class=self.schema.message_class(method.output_type),
            binding=index,
            response_body=rule.response_body,
            path_chains=path_chains,
            body_chain=body_chain,
            mask_field=mask_field,
            bound=frozenset(_proto_path(c) for c in path_chains),
            pool=self.schema.pool,
        )

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and its path variables; 404 when no template matches, 405 for another method."""
        for route in self._by_method.get(http_method, ()):
            found = route.template.match(path)
            if found is not None:
                return route, found
        allowed = sorted({r.http_method for r in self.routes if r.template.match(path) is not None})
        if allowed:
            raise HttpError(
                405,
                f"{http_method} is not allowed on {path}; allowed: {', '.join(allowed)}",
                code=12,  # UNIMPLEMENTED, as grpc-gateway answers
                headers={"Allow": ", ".join(allowed)},
            )
        raise HttpError(404, f"no route for {http_method} {path}", code=5)

    def methods_for(self, path: str) -> list[str]:
        return sorted({r.http_method for r in self.routes if r.template.match(path) is not None})
