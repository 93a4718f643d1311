"""OpenAPI 3 document generated from the same route table and descriptors as the gateway.

Descriptions are the proto comments (the descriptor set carries source info).
Schemas follow protobuf's JSON mapping: camelCase property names, 64-bit integers
as strings, enums as their value names, well-known types in their JSON form.
"""

from __future__ import annotations

from google.protobuf import descriptor

from gatehouse_gateway.transcoder import FD, STRING_WKTS, Route, RouteTable, is_map, is_repeated

OPENAPI_VERSION = "3.0.3"
STATUS_SCHEMA = "google.rpc.Status"
MAX_QUERY_DEPTH = 3

_SCALARS = {
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_INT64: {"type": "string", "format": "int64"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WKT = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.FieldMask": {"type": "string", "example": "name,description"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
_WRAPPER_TYPES = {
    "DoubleValue": FD.TYPE_DOUBLE,
    "FloatValue": FD.TYPE_FLOAT,
    "Int64Value": FD.TYPE_INT64,
    "UInt64Value": FD.TYPE_UINT64,
    "Int32Value": FD.TYPE_INT32,
    "UInt32Value": FD.TYPE_UINT32,
    "BoolValue": FD.TYPE_BOOL,
    "StringValue": FD.TYPE_STRING,
    "BytesValue": FD.TYPE_BYTES,
}


class _Builder:
    def __init__(self, table: RouteTable):
        self.schema = table.schema
        self.components: dict[str, dict] = {STATUS_SCHEMA: _status_schema()}

    def ref(self, desc: descriptor.Descriptor) -> dict:
        name = desc.full_name
        if name in _WKT:
            return dict(_WKT[name])
        if name.startswith("google.protobuf.") and desc.name in _WRAPPER_TYPES:
            return {**_SCALARS[_WRAPPER_TYPES[desc.name]], "nullable": True}
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion stops here
            self.components[name] = self.message(desc)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, desc: descriptor.Descriptor, skip: frozenset[str] = frozenset()) -> dict:
        properties = {}
        for f in desc.fields:
            if f.name in skip:
                continue
            properties[f.json_name] = self.field(f)
        out = {"type": "object", "properties": properties}
        text = self.schema.comment(desc.full_name)
        if text:
            out["description"] = text
        return out

    def field(self, f: FD) -> dict:
        if is_map(f):
            value = f.message_type.fields_by_name["value"]
            schema = {"type": "object", "additionalProperties": self.single(value)}
        elif is_repeated(f):
            schema = {"type": "array", "items": self.single(f)}
        else:
            schema = self.single(f)
        text = self.schema.comment(f"{f.containing_type.full_name}.{f.name}")
        if text:
            if "$ref" in schema:
                schema = {"allOf": [schema], "description": text}
            else:
                schema = {**schema, "description": text}
        return schema

    def single(self, f: FD) -> dict:
        if f.type == FD.TYPE_MESSAGE:
            return self.ref(f.message_type)
        if f.type == FD.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in f.enum_type.values]}
        return dict(_SCALARS[f.type])

    def query_parameters(self, desc, prefix: str, bound: frozenset[str], depth: int = 0) -> list[dict]:
        params = []
        for f in desc.fields:
            path = prefix + f.name
            if path in bound or is_map(f):
                continue
            if f.type == FD.TYPE_MESSAGE and f.message_type.full_name not in STRING_WKTS:
                if (
                    is_repeated(f)
                    or depth >= MAX_QUERY_DEPTH
                    or f.message_type.full_name.startswith("google.")
                ):
                    continue
                params += self.query_parameters(f.message_type, path + ".", bound, depth + 1)
                continue
            schema = self.field(f)
            description = schema.pop("description", "")
            param = {"name": _json_path(prefix, f), "in": "query", "required": False, "schema": schema}
            if description:
                param["description"] = description
            if is_repeated(f):
                param["explode"] = True
            params.append(param)
        return params


def _json_path(prefix: str, f: FD) -> str:
    """``subject.type`` style names for nested query parameters, camelCase per part."""
    if not prefix:
        return f.json_name
    parts = prefix.rstrip(".").split(".")
    return ".".join([*(_camel(p) for p in parts), f.json_name])


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _status_schema() -> dict:
    return {
        "type": "object",
        "description": "The error body: the gRPC status code, a message, and google.rpc details "
        "(BadRequest field violations, ErrorInfo reason and metadata, RetryInfo) with their @type.",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": dict(_WKT["google.protobuf.Any"])},
        },
        "required": ["code", "message", "details"],
    }


def _operation(b: _Builder, route: Route) -> dict:
    method = route.method
    service = method.containing_service
    summary_text = b.schema.comment(f"{service.full_name}.{method.name}")
    op: dict = {
        "operationId": f"{service.name}_{method.name}" + (f"_{route.binding}" if route.binding else ""),
        "tags": [service.name],
        "summary": summary_text.split("\n")[0] if summary_text else method.name,
        "description": summary_text or f"{method.full_name}",
        "parameters": [],
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": b.ref(method.output_type)}},
            },
            "default": {
                "description": "An error: {code, message, details}",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{STATUS_SCHEMA}"}}
                },
            },
        },
    }
    for var, chain in zip(route.template.variables, route.path_chains, strict=True):
        schema = b.field(chain[-1])
        description = schema.pop("description", "")
        param = {"name": var, "in": "path", "required": True, "schema": schema}
        if description:
            param["description"] = description
        op["parameters"].append(param)
    desc = method.input_type
    if route.body == "*":
        body_schema = b.message(desc, skip=frozenset(c[0].name for c in route.path_chains if len(c) == 1))
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body_schema}}}
    elif route.body:
        target = route.body_chain[-1]
        schema = b.field(target)
        note = (
            " Without an `updateMask`, only the fields present in the body are updated."
            if route.mask_field is not None
            else ""
        )
        op["requestBody"] = {
            "required": True,
            "description": (b.schema.comment(f"{desc.full_name}.{target.name}") + note).strip(),
            "content": {"application/json": {"schema": schema}},
        }
        top = route.body_chain[0].name
        op["parameters"] += [
            p for p in b.query_parameters(desc, "", route.bound) if not p["name"].startswith(_camel(top))
        ]
    else:
        op["parameters"] += b.query_parameters(desc, "", route.bound)
    if not op["parameters"]:
        del op["parameters"]
    return op


def build_openapi(table: RouteTable, title: str = "Gatehouse API", version: str = "v1") -> dict:
    """The OpenAPI 3 document of every route in ``table``."""
    b = _Builder(table)
    paths: dict[str, dict] = {}
    tags: dict[str, dict] = {}
    for route in sorted(table.routes, key=lambda r: (r.template.openapi_path, r.http_method)):
        item = paths.setdefault(route.template.openapi_path, {})
        item[route.http_method.lower()] = _operation(b, route)
        service = route.method.containing_service
        tags.setdefault(
            service.name,
            {"name": service.name, "description": b.schema.comment(service.full_name) or service.full_name},
        )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "HTTP/JSON gateway generated from the google.api.http annotations of the "
            "Gatehouse protos. Send `Authorization: Bearer <access token>`; `X-Request-Id` is echoed.",
        },
        "tags": sorted(tags.values(), key=lambda t: t["name"]),
        "paths": paths,
        "components": {
            "schemas": dict(sorted(b.components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}, {}],
    }
