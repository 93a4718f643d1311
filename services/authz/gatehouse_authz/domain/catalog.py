"""The capability catalog: resource types, ordered roles, parent implications.

Loaded from a TOML data file (``data/catalog.toml`` by default) and validated
at start; every problem is reported with where it is (``types.workspace.roles[2]``).
"""

from __future__ import annotations

import pathlib
import re
import tomllib
from dataclasses import dataclass, field

DEFAULT_PATH = pathlib.Path(__file__).resolve().parent.parent / "data" / "catalog.toml"
PLATFORM = "platform"
PLATFORM_ADMIN = "platform_admin"
TYPE_KEYS = frozenset({"roles", "parents", "implied"})
ROLE_KEYS = frozenset({"name", "adds"})
RESERVED_RELATIONS = frozenset({"parent", "grant"})
NAME = re.compile(r"[a-z][a-z0-9_]*")


class CatalogError(ValueError):
    """The catalog file is invalid; the message lists every problem."""


@dataclass
class ResourceType:
    name: str
    roles: list[str]
    adds: dict[str, tuple[str, ...]]
    parents: tuple[str, ...] = ()
    implied: dict[str, str] = field(default_factory=dict)  # parent role -> role here
    role_caps: dict[str, frozenset[str]] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()

    def rank(self, role: str) -> int:
        return self.roles.index(role)

    @property
    def top_role(self) -> str:
        return self.roles[-1]


@dataclass
class Catalog:
    types: dict[str, ResourceType]

    def type(self, name: str) -> ResourceType | None:
        return self.types.get(name)

    def highest(self, type_name: str, roles) -> str:
        t = self.types[type_name]
        ranked = [r for r in roles if r in t.adds]
        return max(ranked, key=t.rank) if ranked else ""


def load_catalog(path: pathlib.Path | str | None = None) -> Catalog:
    path = pathlib.Path(path) if path else DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"catalog file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog file {path} is not valid TOML: {exc}") from None
    return parse_catalog(data, source=str(path))


def parse_catalog(data: dict, source: str = "catalog") -> Catalog:
    problems: list[str] = []
    raw_types = data.get("types")
    if not isinstance(raw_types, dict) or not raw_types:
        raise CatalogError(f"{source}: needs a [types.<name>] table for each resource type")
    for required in (PLATFORM, "organization", "workspace"):
        if required not in raw_types:
            problems.append(f"types.{required}: required type is missing")
    types: dict[str, ResourceType] = {}
    for name, raw in raw_types.items():
        where = f"types.{name}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a table")
            continue
        for key in sorted(set(raw) - TYPE_KEYS):
            problems.append(f"{where}.{key}: unknown key (expected one of {', '.join(sorted(TYPE_KEYS))})")
        if not NAME.fullmatch(name):
            problems.append(f"{where}: type names are lower-case letters, digits and '_'")
        roles_raw = raw.get("roles")
        if not isinstance(roles_raw, list) or not roles_raw:
            problems.append(f"{where}.roles: needs at least one role")
            continue
        roles: list[str] = []
        adds: dict[str, tuple[str, ...]] = {}
        for i, role in enumerate(roles_raw):
            rname = role.get("name") if isinstance(role, dict) else None
            if not isinstance(rname, str) or not rname:
                problems.append(f"{where}.roles[{i}]: needs a name")
                continue
            for key in sorted(set(role) - ROLE_KEYS):
                problems.append(f"{where}.roles[{i}].{key}: unknown key (expected name, adds)")
            if rname in adds:
                problems.append(f"{where}.roles[{i}]: duplicate role {rname!r}")
                continue
            if rname in RESERVED_RELATIONS:
                problems.append(f"{where}.roles[{i}]: {rname!r} is reserved for relationships")
            caps = role.get("adds", [])
            if not isinstance(caps, list) or not all(isinstance(c, str) and c for c in caps):
                problems.append(f"{where}.roles[{i}].adds: must be a list of capability names")
                caps = []
            roles.append(rname)
            adds[rname] = tuple(caps)
        parents = raw.get("parents", [])
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            problems.append(f"{where}.parents: must be a list of type names")
            parents = []
        implied: dict[str, str] = {}
        implied_raw = raw.get("implied", [])
        if not isinstance(implied_raw, list):
            problems.append(f"{where}.implied: must be a list of {{ parent_role, role }} tables")
            implied_raw = []
        for i, imp in enumerate(implied_raw):
            if not isinstance(imp, dict):
                problems.append(f"{where}.implied[{i}]: must be a table {{ parent_role, role }}")
                continue
            pr, r = imp.get("parent_role"), imp.get("role")
            if not isinstance(pr, str) or not pr:
                problems.append(f"{where}.implied[{i}].parent_role: is required")
                continue
            if r not in adds:
                problems.append(f"{where}.implied[{i}]: role {r!r} is not a role of {name}")
                continue
            if pr in implied:
                problems.append(f"{where}.implied[{i}]: parent role {pr!r} is listed twice")
                continue
            implied[pr] = r
        types[name] = ResourceType(name=name, roles=roles, adds=adds, parents=tuple(parents), implied=implied)
    platform = types.get(PLATFORM)
    if platform is not None and PLATFORM_ADMIN not in platform.adds:
        problems.append(f"types.{PLATFORM}.roles: needs the {PLATFORM_ADMIN!r} role")
    for t in types.values():
        for p in t.parents:
            if p not in types:
                problems.append(f"types.{t.name}.parents: unknown type {p!r}")
        for i, parent_role in enumerate(t.implied):
            if not any(parent_role in types[p].adds for p in t.parents if p in types):
                problems.append(
                    f"types.{t.name}.implied[{i}]: {parent_role!r} is not a role of any parent type"
                )
        seen: set[str] = set()
        for role in t.roles:
            dup = set(t.adds[role]) & seen
            if dup:
                problems.append(
                    f"types.{t.name}.roles: {role!r} adds {sorted(dup)} already held by a lower role"
                )
            seen |= set(t.adds[role])
            t.role_caps[role] = frozenset(seen)
        t.capabilities = frozenset(seen)
    if problems:
        raise CatalogError(f"{source}: " + "; ".join(problems))
    return Catalog(types)
