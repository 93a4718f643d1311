"""The catalog: shipped defaults, validation with clear messages, override by configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gatehouse.kit.config import ConfigError
from gatehouse_authz.domain.catalog import CatalogError, load_catalog, parse_catalog
from gatehouse_authz.server import CATALOG_VARIABLE, load_configured_catalog

GOOD_EXTRA = """
[types.agent]
parents = ["workspace"]
roles = [
  { name = "user", adds = ["agent:run"] },
  { name = "editor", adds = ["agent:edit"] },
]
implied = [
  { parent_role = "member", role = "user" },
  { parent_role = "admin", role = "editor" },
]
"""


def test_shipped_catalog_has_the_documented_capabilities():
    catalog = load_catalog()
    ws = catalog.types["workspace"]
    assert ws.roles == ["viewer", "member", "admin", "owner"]
    assert ws.role_caps["owner"] == ws.capabilities
    assert {"view:audit", "delete:workspace", "transfer:ownership"} <= ws.capabilities
    assert catalog.types["platform"].role_caps["platform_admin"] == {
        "platform:read_audit",
        "platform:create_organization",
        "platform:manage_users",
    }
    assert catalog.types["platform"].role_caps["security_auditor"] == {"platform:read_audit"}
    assert catalog.types["dataset"].capabilities == {"read", "write", "delete", "share"}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"types": {"workspace": {"roles": "viewer"}}}, "types.workspace.roles: needs at least one role"),
        ({"types": {"workspace": {"role": []}}}, "types.workspace.role: unknown key"),
        ({"types": {"workspace": {"roles": [{"name": "v", "add": []}]}}}, "roles[0].add: unknown key"),
        ({"types": {"workspace": {"roles": [{"adds": []}]}}}, "types.workspace.roles[0]: needs a name"),
        ({"types": {"workspace": {"roles": [{"name": "parent"}]}}}, "'parent' is reserved"),
        ({"types": {"workspace": {"roles": [{"name": "v", "adds": "chat"}]}}}, "adds: must be a list"),
        ({"types": {"Work Space": {"roles": [{"name": "v"}]}}}, "type names are lower-case"),
        (
            {"types": {"workspace": {"parents": "organization", "roles": [{"name": "v"}]}}},
            "parents: must be a list",
        ),
        (
            {"types": {"workspace": {"roles": [{"name": "v"}], "implied": [{"role": "v"}]}}},
            "implied[0].parent_role: is required",
        ),
        ({"types": {"platform": {"roles": [{"name": "x"}]}}}, "needs the 'platform_admin' role"),
        ({"types": {}}, "needs a [types.<name>] table"),
    ],
)
def test_each_problem_is_named_with_where_it_is(raw, fragment):
    with pytest.raises(CatalogError) as info:
        parse_catalog(raw, source="my.toml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("my.toml")


def test_configured_catalog_overrides_and_extends(tmp_path):
    path = tmp_path / "catalog.toml"
    shipped = load_catalog().types
    path.write_text(
        (pathlib_default_text() + GOOD_EXTRA).replace(
            '"platform:manage_users"', '"platform:manage_users", "x:y"'
        )
    )
    catalog = load_configured_catalog({CATALOG_VARIABLE: str(path)})
    assert catalog.types["agent"].role_caps["editor"] == {"agent:run", "agent:edit"}
    assert catalog.types["agent"].implied == {"member": "user", "admin": "editor"}
    assert "x:y" in catalog.types["platform"].capabilities and set(shipped) < set(catalog.types)


def pathlib_default_text() -> str:
    from gatehouse_authz.domain.catalog import DEFAULT_PATH

    return DEFAULT_PATH.read_text()


def test_bad_configured_catalog_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match=f"{CATALOG_VARIABLE}: catalog file .* does not exist"):
        load_configured_catalog({CATALOG_VARIABLE: str(tmp_path / "missing.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("[types.workspace\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_configured_catalog({CATALOG_VARIABLE: str(broken)})


def test_the_service_refuses_to_start_with_a_bad_catalog(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(pathlib_default_text().replace('role = "admin" }', 'role = "emperor" }', 1))
    env = {
        **os.environ,
        CATALOG_VARIABLE: str(bad),
        "GATEHOUSE_DATA_DIR": str(tmp_path),
        "GATEHOUSE_LISTEN_ADDRESS": "127.0.0.1:0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gatehouse_authz"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert CATALOG_VARIABLE in done.stderr and "role 'emperor' is not a role of" in done.stderr


async def test_cached_verifier_serves_only_verified_tokens_for_a_short_time():
    import asyncio as _asyncio

    from gatehouse.kit import errors
    from gatehouse.testing.tokens import TokenMint
    from gatehouse_authz.server import CachedVerifier

    mint, calls = TokenMint(), []

    async def counting(token):
        calls.append(token)
        return await mint.verifier(token)

    cached = CachedVerifier(counting, ttl=0.2)
    token = mint.service()
    assert cached.cached(token) is None  # the synchronous probe knows only verified tokens
    first, second = await cached(token), await cached(token)
    assert first == second and first.kind == "service" and len(calls) == 1
    assert cached.cached(token) == first
    with pytest.raises(errors.Unauthenticated):
        await cached(token[:-4] + "AAAA")  # a forged signature is verified (and refused), never served
    with pytest.raises(errors.Unauthenticated):
        await cached(token[:-4] + "AAAA")
    assert len(calls) == 3  # failures are not cached
    assert cached.cached(token[:-4] + "AAAA") is None
    await _asyncio.sleep(0.25)
    assert cached.cached(token) is None  # expired: the kit then awaits the verifier
    await cached(token)
    assert len(calls) == 4  # verified again after the ttl
