"""Differential test: the in-memory index answers exactly like the plain evaluator
over the same rows, for checks, GetAccess and both lookups, on random relationship sets."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse_authz.adapters.follower import Follower
from gatehouse_authz.adapters.store import Store
from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import load_catalog
from gatehouse_authz.domain.index import Index
from gatehouse_authz.server import MIGRATIONS
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
    # a workspace without a parent, which comes and goes entirely
    + [m.Tuple("workspace", "w9", r, "user", u) for r in ("viewer", "admin") for u in USERS]
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
    [("workspace", w) for w in [*WORKSPACES, "w9"]]
    + [("dataset", d) for d in DATASETS]
    + [("organization", o) for o in ORGS]
    + [("platform", "platform")]
)


@pytest.fixture
def migrated_url(database_url):
    upgrade_to_head(MIGRATIONS, database_url)
    return database_url


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
    # Rows and states that existed once and were removed again (exercises every removal path).
    gone = draw(st.lists(st.sampled_from(ROLE_TUPLES), max_size=12, unique=True))
    gone = [t for t in gone if t not in rows]
    keys = {(s.kind, s.key) for s in states}
    gone_states = draw(st.lists(st.sampled_from(STATES), max_size=4, unique_by=lambda s: (s.kind, s.key)))
    gone_states = [s for s in gone_states if (s.kind, s.key) not in keys]
    # Parents that were moved: first under another organization / workspace, then where they are now.
    moved = [
        m.Tuple(p.resource_type, p.resource_id, "parent", p.subject_type, draw(st.sampled_from(pool)))
        for p, pool in zip(
            parents,
            [ORGS] * len(WORKSPACES) + [WORKSPACES] * len(DATASETS) + [ORGS] * len(GROUPS),
            strict=True,
        )
    ]
    return parents + rows, states, (moved, gone, gone_states)


def build(rows, states, history=((), (), ())) -> Index:
    moved, gone, gone_states = history
    index = Index(CATALOG)
    index.apply([m.Change("put", t) for t in moved], 1)
    index.apply(
        [m.Change("put", t) for t in [*gone, *rows]] + [m.Change("put", s) for s in [*gone_states, *states]],
        2,
    )
    index.apply([m.Change("delete", t) for t in gone] + [m.Change("delete", s) for s in gone_states], 3)
    return index


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.sampled_from([("pwd",), ("pwd", "otp")]))
def test_checks_and_access_match_the_reference(world, amr):
    rows, states, history = world
    index, ref = build(rows, states, history), Reference(CATALOG, rows, states)
    for user, res in itertools.product(USERS, RESOURCES):
        subject = ("user", user)
        expected = ref.capabilities(subject, res, amr)
        rtype = CATALOG.types[res[0]]
        decisions = {c: index.check(subject, res, c, amr) for c in rtype.capabilities}
        got = {c for c, decision in decisions.items() if decision.allowed}
        assert got == expected, (user, res, rows, states)
        # The hot path gives the same decision, reason included, as the rules written plainly
        # over roles_on (which the hot path itself uses only for platform admins and deep trees).
        for c, decision in decisions.items():
            assert decision == index._check_general(subject, res, c, amr), (user, res, c, rows, states)
        access = index.access(subject, res, amr)
        assert set(access.capabilities) == expected
        assert list(access.capabilities) == sorted(expected)
        disabled = ref._state("disabled", f"{subject[0]}:{subject[1]}") == "1"
        assert access.is_platform_admin == (ref.platform_admin(subject) and not disabled)
        assert access.member_role == CATALOG.highest(res[0], ref.own_roles(subject, res))
        roles = set() if ref.denied(subject, res, amr) else ref.roles(subject, res)
        assert access.effective_role == CATALOG.highest(res[0], roles)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_lookups_match_the_reference(world):
    rows, states, history = world
    index, ref = build(rows, states, history), Reference(CATALOG, rows, states)
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
            for org in ORGS:  # restricted to one parent
                under = [r for r in expected if ("organization", org) in ref.chain((rtype, r))]
                assert index.lookup_resources(("user", user), rtype, cap, ("organization", org)) == under
        for rid in {r[1] for r in known if r[0] == rtype}:
            expected = sorted(
                u for u in USERS if cap in ref.capabilities(("user", u), (rtype, rid), ("pwd", "otp"))
            )
            got = index.lookup_subjects((rtype, rid), cap)
            assert [u for u in got if u in USERS] == expected, (rtype, rid, cap)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(worlds())
def test_index_loaded_from_the_database_matches_the_reference_over_its_rows(migrated_url, world):
    """Rows go through the store; the reference reads the stored rows back with plain SQL."""
    rows, states, _ = world
    asyncio.run(_against_database(migrated_url, rows, states))


async def _against_database(database_url, rows, states):
    db = Database(database_url)
    try:
        async with db.unit_of_work() as uow:
            await uow.session.execute(sa.text("DELETE FROM relationships"))
            await uow.session.execute(sa.text("DELETE FROM states"))
            await uow.commit()
        store = Store(db)
        await store.write([("touch", t) for t in rows] + [("touch", s) for s in states])
        async with db.unit_of_work() as uow:
            stored_rows = [
                m.Tuple(*r)
                for r in await uow.session.execute(
                    sa.text(
                        "SELECT resource_type, resource_id, relation, subject_type, subject_id, capability"
                        " FROM relationships"
                    )
                )
            ]
            stored_states = [
                m.State(*r) for r in await uow.session.execute(sa.text("SELECT kind, key, value FROM states"))
            ]
        index = Index(CATALOG)
        await Follower(store, index).load()
        ref = Reference(CATALOG, stored_rows, stored_states)
        for user, res in itertools.product(USERS, RESOURCES):
            expected = ref.capabilities(("user", user), res, ("pwd",))
            assert set(index.access(("user", user), res, ("pwd",)).capabilities) == expected
    finally:
        await db.dispose()
