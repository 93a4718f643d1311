"""Differential test: the in-memory index answers exactly like the plain evaluator
over the same rows, for checks, GetAccess and both lookups, on random relationship sets."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import load_catalog
from gatehouse_authz.domain.index import Index
from services.authz.tests.reference import Reference

CATALOG = load_catalog()
USERS = ["u1", "u2", "u3", "u4"]
ORGS = ["o1", "o2"]
WORKSPACES = ["w1", "w2", "w3"]
DATASETS = ["d1", "d2"]
GROUPS = ["g1", "g2"]

ROLE_TUPLES = (
    [
        m.Tuple("workspace", w, r, "user", u)
        for w in WORKSPACES
        for r in CATALOG.types["workspace"].roles
        for u in USERS
    ]
    + [
        m.Tuple("workspace", w, r, "group", g)
        for w in WORKSPACES
        for r in ("viewer", "admin")
        for g in GROUPS
    ]
    + [
        m.Tuple("organization", o, r, "user", u)
        for o in ORGS
        for r in ("viewer", "admin", "owner")
        for u in USERS
    ]
    + [m.Tuple("organization", o, "admin", "group", g) for o in ORGS for g in GROUPS]
    + [m.Tuple("group", g, "member", "user", u) for g in GROUPS for u in USERS]
    + [m.Tuple("dataset", d, "member", "user", u) for d in DATASETS for u in USERS]
    + [
        m.Tuple("platform", "platform", r, "user", u)
        for r in ("platform_admin", "security_auditor")
        for u in USERS
    ]
    + [
        m.Tuple("dataset", d, "grant", st_, sid, c)
        for d in DATASETS
        for c in ("read", "share")
        for st_, sid in [
            ("user", "u1"),
            ("user", "u3"),
            ("group", "g1"),
            ("organization", "o1"),
            ("organization", "o2"),
        ]
    ]
)
STATES = (
    [m.State("disabled", f"user:{u}") for u in USERS]
    + [
        m.State("membership", f"{o}|{u}", s)
        for o in ORGS
        for u in USERS
        for s in (m.ACTIVE, m.INACTIVE, m.INVITED)
    ]
    + [m.State("deleted", f"workspace:{w}") for w in WORKSPACES]
    + [m.State("deleted", f"dataset:{d}") for d in DATASETS]
    + [m.State("require_mfa", o) for o in ORGS]
)
RESOURCES = (
    [("workspace", w) for w in WORKSPACES]
    + [("dataset", d) for d in DATASETS]
    + [("organization", o) for o in ORGS]
    + [("platform", "platform")]
)


@st.composite
def worlds(draw):
    parents = [
        m.Tuple("workspace", w, "parent", "organization", draw(st.sampled_from(ORGS))) for w in WORKSPACES
    ]
    parents += [
        m.Tuple("dataset", d, "parent", "workspace", draw(st.sampled_from(WORKSPACES))) for d in DATASETS
    ]
    parents += [m.Tuple("group", g, "parent", "organization", draw(st.sampled_from(ORGS))) for g in GROUPS]
    rows = draw(st.lists(st.sampled_from(ROLE_TUPLES), max_size=25, unique=True))
    states = draw(st.lists(st.sampled_from(STATES), max_size=8, unique_by=lambda s: (s.kind, s.key)))
    return parents + rows, states


def build(rows, states) -> Index:
    index = Index(CATALOG)
    index.apply([m.Change("put", t) for t in rows] + [m.Change("put", s) for s in states], 1)
    return index


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.sampled_from([("pwd",), ("pwd", "otp")]))
def test_checks_and_access_match_the_reference(world, amr):
    rows, states = world
    index, ref = build(rows, states), Reference(CATALOG, rows, states)
    for user, res in itertools.product(USERS, RESOURCES):
        subject = ("user", user)
        expected = ref.capabilities(subject, res, amr)
        rtype = CATALOG.types[res[0]]
        got = {c for c in rtype.capabilities if index.check(subject, res, c, amr).allowed}
        assert got == expected, (user, res, rows, states)
        assert set(index.access(subject, res, amr).capabilities) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_lookups_match_the_reference(world):
    rows, states = world
    index, ref = build(rows, states), Reference(CATALOG, rows, states)
    known = {t.resource for t in rows} | {t.subject for t in rows if t.relation == "parent"}
    for rtype, cap in (
        ("workspace", "chat"),
        ("workspace", "manage:members"),
        ("dataset", "read"),
        ("dataset", "share"),
    ):
        for user in USERS:
            expected = sorted(
                r[1] for r in known if r[0] == rtype and cap in ref.capabilities(("user", user), r)
            )
            assert index.lookup_resources(("user", user), rtype, cap) == expected, (user, rtype, cap)
        for rid in {r[1] for r in known if r[0] == rtype}:
            expected = sorted(
                u for u in USERS if cap in ref.capabilities(("user", u), (rtype, rid), ("pwd", "otp"))
            )
            got = index.lookup_subjects((rtype, rid), cap)
            assert [u for u in got if u in USERS] == expected, (rtype, rid, cap)
