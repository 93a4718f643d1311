"""The capability catalog: resource types, ordered roles, parent implications.

Loaded from a TOML data file (``data/catalog.toml`` by default) and validated
at start; every problem is reported with where it is (``types.workspace.roles[2]``).
"""

from __future__ import annotations

import pathlib
import tomllib
from dataclasses import dataclass, field

DEFAULT_PATH = pathlib.Path(__file__).resolve().parent.parent / "data" / "catalog.toml"
PLATFORM = "platform"
PLATFORM_ADMIN = "platform_admin"


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
            if rname in adds:
                problems.append(f"{where}.roles[{i}]: duplicate role {rname!r}")
                continue
            caps = role.get("adds", [])
            if not isinstance(caps, list) or not all(isinstance(c, str) and c for c in caps):
                problems.append(f"{where}.roles[{i}].adds: must be a list of capability names")
                caps = []
            roles.append(rname)
            adds[rname] = tuple(caps)
        parents = tuple(raw.get("parents", ()))
        implied = {}
        for i, imp in enumerate(raw.get("implied", [])):
            pr, r = imp.get("parent_role"), imp.get("role")
            if r not in adds:
                problems.append(f"{where}.implied[{i}]: role {r!r} is not a role of {name}")
                continue
            implied[pr] = r
        types[name] = ResourceType(name=name, roles=roles, adds=adds, parents=parents, implied=implied)
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
