"""The decision rules of the in-memory index, exactly (no I/O)."""

from __future__ import annotations

import pytest

from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import CatalogError, load_catalog, parse_catalog
from gatehouse_authz.domain.index import Index, UnknownCapability, UnknownType
from services.authz.tests.helpers import parse_tuple

CATALOG = load_catalog()
WS_CAPS = {
    "viewer": {"chat", "view:wiki", "read:model", "read:files"},
    "member": {"view:memory", "view:dashboard", "manage:wiki", "manage:agents"},
    "admin": {
        "manage:skills",
        "manage:channels",
        "manage:models",
        "manage:security",
        "manage:settings",
        "manage:members",
        "view:audit",
    },
    "owner": {"delete:workspace", "transfer:ownership"},
}
ORG_CAPS = {
    "viewer": {"org:view", "org:list_members"},
    "member": set(),
    "admin": {
        "org:invite",
        "org:manage_members",
        "org:manage_groups",
        "org:create_workspace",
        "org:read_audit",
        "org:manage_grants",
    },
    "owner": {"org:delete", "org:transfer_ownership", "org:manage_settings"},
}
ORDER = ["viewer", "member", "admin", "owner"]


def cumulative(table, role):
    out = set()
    for r in ORDER[: ORDER.index(role) + 1]:
        out |= table[r]
    return out


def put(index: Index, *items, revision=None):
    index.apply([m.Change("put", i) for i in items], revision or index.revision + 1)


rel = parse_tuple


def member(org: str, user: str, status: str = m.ACTIVE) -> m.State:
    return m.State("membership", f"{org}|{user}", status)


@pytest.fixture
def world() -> Index:
    index = Index(CATALOG)
    put(
        index,
        rel("workspace:w#parent@organization:o"),
        rel("dataset:d#parent@workspace:w"),
        rel("group:g1#parent@organization:o"),
        rel("group:g2#parent@organization:o"),
        rel("workspace:w2#parent@organization:o2"),
    )
    return index


@pytest.mark.parametrize("role", ORDER)
def test_workspace_role_matrix_exact(world, role):
    put(world, rel(f"workspace:w#{role}@user:u"), member("o", "u"))
    allowed = {
        c
        for c in CATALOG.types["workspace"].capabilities
        if world.check(("user", "u"), ("workspace", "w"), c).allowed
    }
    assert allowed == cumulative(WS_CAPS, role)
    assert world.access(("user", "u"), ("workspace", "w")).capabilities == tuple(sorted(allowed))


@pytest.mark.parametrize("role", ORDER)
def test_organization_role_matrix_exact(world, role):
    put(world, rel(f"organization:o#{role}@user:u"), member("o", "u"))
    allowed = {
        c
        for c in CATALOG.types["organization"].capabilities
        if world.check(("user", "u"), ("organization", "o"), c).allowed
    }
    assert allowed == cumulative(ORG_CAPS, role)


def test_org_owner_and_admin_imply_workspace_roles(world):
    put(
        world,
        rel("organization:o#owner@user:a"),
        rel("organization:o#admin@user:b"),
        rel("organization:o#member@user:c"),
    )
    assert world.access(("user", "a"), ("workspace", "w")).effective_role == "owner"
    assert world.check(("user", "a"), ("workspace", "w"), "delete:workspace").reason == m.INHERITED_ROLE
    assert world.access(("user", "b"), ("workspace", "w")).effective_role == "admin"
    assert not world.check(("user", "b"), ("workspace", "w"), "delete:workspace").allowed
    assert world.access(("user", "c"), ("workspace", "w")).capabilities == ()


def test_platform_admin_is_owner_everywhere_and_security_auditor_reads_audit(world):
    put(
        world,
        rel("platform:platform#platform_admin@user:p"),
        rel("platform:platform#security_auditor@user:s"),
    )
    assert world.check(("user", "p"), ("workspace", "w2"), "delete:workspace").reason == m.PLATFORM_ROLE
    assert world.check(("user", "p"), ("organization", "o"), "org:delete").allowed
    assert world.check(("user", "p"), ("dataset", "d"), "share").allowed
    for cap in ("platform:create_organization", "platform:manage_users", "platform:read_audit"):
        assert world.check(("user", "p"), ("platform", "platform"), cap).allowed
    assert world.check(("user", "s"), ("platform", "platform"), "platform:read_audit").allowed
    assert not world.check(("user", "s"), ("platform", "platform"), "platform:manage_users").allowed
    assert not world.check(("user", "s"), ("workspace", "w"), "chat").allowed
    access = world.access(("user", "p"), ("workspace", "w"))
    assert access.is_platform_admin and access.member_role == "" and access.effective_role == "owner"


def test_union_of_two_groups(world):
    put(
        world,
        member("o", "both"),
        member("o", "one"),
        rel("group:g1#member@user:both"),
        rel("group:g2#member@user:both"),
        rel("group:g1#member@user:one"),
        rel("workspace:w#viewer@group:g1"),
        rel("dataset:d#grant:share@group:g2"),
    )
    assert world.check(("user", "both"), ("workspace", "w"), "chat").reason == m.GROUP_ROLE
    assert world.check(("user", "both"), ("dataset", "d"), "share").reason == m.GROUP_GRANT
    assert world.check(("user", "one"), ("workspace", "w"), "chat").allowed
    assert not world.check(("user", "one"), ("dataset", "d"), "share").allowed


def test_dataset_inherits_from_workspace_and_direct_and_org_grants(world):
    put(
        world,
        member("o", "v"),
        member("o", "mem"),
        member("o", "ad"),
        member("o", "x"),
        rel("workspace:w#viewer@user:v"),
        rel("workspace:w#member@user:mem"),
        rel("workspace:w#admin@user:ad"),
    )
    caps = lambda u: world.access(("user", u), ("dataset", "d")).capabilities  # noqa: E731
    assert caps("v") == ("read",)
    assert caps("mem") == ("read", "write")
    assert caps("ad") == ("delete", "read", "share", "write")
    assert caps("x") == ()
    put(world, rel("dataset:d#grant:read@organization:o"), rel("dataset:d#grant:write@user:x"))
    assert world.check(("user", "x"), ("dataset", "d"), "read").reason == m.ORGANIZATION_GRANT
    assert world.check(("user", "x"), ("dataset", "d"), "write").reason == m.DIRECT_GRANT
    assert not world.check(("user", "outsider"), ("dataset", "d"), "read").allowed  # not an org member


def test_denials_disabled_inactive_deleted_mfa(world):
    put(world, rel("workspace:w#admin@user:u"), member("o", "u"), rel("dataset:d#grant:read@user:u"))
    assert world.check(("user", "u"), ("dataset", "d"), "read").allowed
    put(world, m.State("disabled", "user:u"))
    assert world.check(("user", "u"), ("workspace", "w"), "chat").reason == m.SUBJECT_DISABLED
    put(world, m.State("disabled", "user:u", "0"))
    put(world, member("o", "u", m.INACTIVE))
    assert world.check(("user", "u"), ("workspace", "w"), "chat").reason == m.MEMBERSHIP_INACTIVE
    put(world, member("o", "u", m.INVITED))
    assert world.check(("user", "u"), ("dataset", "d"), "read").reason == m.MEMBERSHIP_INACTIVE
    put(world, member("o", "u"))
    put(world, m.State("deleted", "workspace:w"))
    assert world.check(("user", "u"), ("workspace", "w"), "chat").reason == m.RESOURCE_DELETED
    assert world.check(("user", "u"), ("dataset", "d"), "read").reason == m.RESOURCE_DELETED
    assert world.access(("user", "u"), ("workspace", "w")).capabilities == ()
    put(world, m.State("deleted", "workspace:w", "0"))
    assert world.check(("user", "u"), ("workspace", "w"), "chat").allowed
    put(world, m.State("require_mfa", "o"))
    assert world.check(("user", "u"), ("workspace", "w"), "chat", ("pwd",)).reason == m.MFA_REQUIRED
    assert world.check(("user", "u"), ("workspace", "w"), "chat", ("pwd", "otp")).allowed


def test_deleting_tuples_removes_access(world):
    put(world, rel("workspace:w#admin@user:u"), member("o", "u"))
    world.apply([m.Change("delete", rel("workspace:w#admin@user:u"))], world.revision + 1)
    assert world.access(("user", "u"), ("workspace", "w")).capabilities == ()


def test_lookups(world):
    put(
        world,
        member("o", "u"),
        rel("workspace:w#viewer@user:u"),
        rel("workspace:w3#parent@organization:o"),
        rel("organization:o#admin@user:a"),
        member("o", "a"),
        rel("group:g1#member@user:gm"),
        member("o", "gm"),
        rel("workspace:w3#member@group:g1"),
    )
    assert world.lookup_resources(("user", "u"), "workspace", "chat") == ["w"]
    assert world.lookup_resources(("user", "a"), "workspace", "manage:members") == ["w", "w3"]
    assert world.lookup_resources(("user", "gm"), "workspace", "chat") == ["w3"]
    assert world.lookup_resources(("user", "a"), "workspace", "chat", ("organization", "o2")) == []
    assert world.lookup_subjects(("workspace", "w3"), "chat") == ["a", "gm"]
    assert world.lookup_subjects(("workspace", "w"), "manage:members") == ["a"]


def test_unknown_type_and_capability(world):
    with pytest.raises(UnknownType):
        world.check(("user", "u"), ("spaceship", "x"), "fly")
    with pytest.raises(UnknownCapability):
        world.check(("user", "u"), ("workspace", "w"), "fly")


def test_catalog_validation_reports_every_problem():
    bad = {
        "types": {
            "platform": {"roles": [{"name": "platform_admin", "adds": []}]},
            "organization": {"roles": [{"name": "viewer", "adds": ["a"]}, {"name": "viewer", "adds": []}]},
            "workspace": {
                "parents": ["galaxy"],
                "roles": [{"name": "viewer", "adds": ["x"]}, {"name": "member", "adds": ["x"]}],
                "implied": [{"parent_role": "owner", "role": "emperor"}],
            },
        }
    }
    with pytest.raises(CatalogError) as info:
        parse_catalog(bad)
    text = str(info.value)
    for fragment in (
        "duplicate role 'viewer'",
        "unknown type 'galaxy'",
        "role 'emperor' is not a role of workspace",
        "already held by a lower role",
    ):
        assert fragment in text
    with pytest.raises(CatalogError, match="required type is missing"):
        parse_catalog({"types": {"workspace": {"roles": [{"name": "viewer"}]}}})


def test_deleted_organization_takes_everything_under_it(world):
    put(world, rel("organization:o#owner@user:u"), member("o", "u"), rel("dataset:d#grant:read@user:g"))
    assert world.lookup_resources(("user", "u"), "dataset", "share") == ["d"]
    put(world, m.State("deleted", "organization:o"))
    for res, cap in (
        (("organization", "o"), "org:view"),
        (("workspace", "w"), "chat"),
        (("dataset", "d"), "read"),
    ):
        assert world.check(("user", "u"), res, cap).reason == m.RESOURCE_DELETED
    assert world.check(("user", "g"), ("dataset", "d"), "read").reason == m.RESOURCE_DELETED
    assert world.lookup_resources(("user", "u"), "workspace", "chat") == []
    assert world.lookup_subjects(("workspace", "w"), "chat") == []


def test_lookups_leave_out_disabled_and_inactive_users(world):
    put(
        world,
        rel("workspace:w#viewer@user:a"),
        rel("workspace:w#viewer@user:b"),
        rel("workspace:w#viewer@user:c"),
        member("o", "a"),
        member("o", "b", m.INACTIVE),
        m.State("disabled", "user:c"),
    )
    assert world.lookup_subjects(("workspace", "w"), "chat") == ["a"]
    assert world.lookup_resources(("user", "b"), "workspace", "chat") == []
    assert world.lookup_resources(("user", "c"), "workspace", "chat") == []


def test_lookup_walk_follows_the_answer_not_the_data(world):
    """An organization member (a role that implies nothing on workspaces) is never expanded into
    the organization's thousand workspaces; an organization admin is (they are the answer)."""
    put(world, *[rel(f"workspace:x{i}#parent@organization:o") for i in range(1000)])
    put(
        world,
        rel("organization:o#member@user:m"),
        rel("organization:o#admin@user:a"),
        rel("workspace:x7#viewer@user:m"),
    )
    assert world._reachable(("user", "m"), "workspace") == {("workspace", "x7")}
    assert world.lookup_resources(("user", "m"), "workspace", "chat") == ["x7"]
    assert len(world.lookup_resources(("user", "a"), "workspace", "manage:members")) == 1001


def test_explain_names_the_path_and_the_reasons(world):
    put(
        world,
        member("o", "u"),
        rel("group:g1#member@user:u"),
        rel("organization:o#admin@group:g1"),
        rel("dataset:d#grant:read@organization:o"),
        member("o", "x"),
    )
    steps = world.explain(("user", "u"), ("dataset", "d"), "delete")
    assert [s.relationship for s in steps] == [
        "group:g1#member@user:u",
        "organization:o#admin@group:g1",
        "workspace:w#parent@organization:o",
        "dataset:d#parent@workspace:w",
        "",
    ]
    assert steps[-1].description == "role admin on dataset holds delete"
    grant = world.explain(("user", "x"), ("dataset", "d"), "read")
    assert [s.reason for s in grant] == [m.ORGANIZATION_GRANT, m.ORGANIZATION_GRANT]
    assert grant[1].relationship == "dataset:d#grant:read@organization:o"
    put(world, m.State("deleted", "workspace:w"))
    assert world.explain(("user", "u"), ("dataset", "d"), "read")[0].description == (
        "workspace:w is deleted (a parent of dataset:d)"
    )


def test_platform_admin_lookup_forgets_removed_resources(world):
    put(world, rel("platform:platform#platform_admin@user:p"), rel("workspace:gone#viewer@user:u"))
    assert "gone" in world.lookup_resources(("user", "p"), "workspace", "chat")
    world.apply([m.Change("delete", rel("workspace:gone#viewer@user:u"))], world.revision + 1)
    assert world.lookup_resources(("user", "p"), "workspace", "chat") == ["w", "w2"]


def test_a_parent_cycle_or_a_very_deep_tree_is_answered_by_the_general_rules(world):
    # Writes never make such trees (parents follow the catalog), but the index must not loop or
    # answer differently on one: the hot path hands these to the rules written over roles_on.
    put(
        world,
        rel("organization:o#parent@workspace:w"),  # o -> w -> o -> ...
        rel("organization:o#owner@user:a"),
        member("o", "a"),
    )
    for capability in ("chat", "delete:workspace"):
        decision = world.check(("user", "a"), ("workspace", "w"), capability)
        assert decision == world._check_general(("user", "a"), ("workspace", "w"), capability)
        assert decision == m.Decision(True, m.INHERITED_ROLE)
    # 20 datasets, each the parent of the next (deeper than the walk's bound of 16 parents).
    put(world, *(rel(f"dataset:d{i + 1}#parent@dataset:d{i}") for i in range(20)))
    put(world, rel("dataset:d0#parent@workspace:w"), rel("dataset:d0#admin@user:b"), member("o", "b"))
    for i in (1, 16, 17, 20):
        for who in ("a", "b"):
            got = world.check(("user", who), ("dataset", f"d{i}"), "read")
            assert got == world._check_general(("user", who), ("dataset", f"d{i}"), "read")
    # b's admin role on d0 reaches down 16 levels (dataset admin implies admin on a child dataset).
    assert world.check(("user", "b"), ("dataset", "d16"), "read").reason == m.INHERITED_ROLE
    assert world.check(("user", "b"), ("dataset", "d17"), "read").reason == m.NO_RELATIONSHIP
