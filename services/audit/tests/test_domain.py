"""Pure domain rules of audit: retention from tenancy events, the chain walk's verdicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse_audit.domain.chain import GENESIS, ChainKey, ChainWalk
from gatehouse_audit.domain.model import Event
from gatehouse_audit.domain.retention import retention_days_of


def org_update(details, action="tenancy.organization.update", outcome="SUCCESS", org="o1") -> Event:
    return Event(
        id="e", occur_us=1, service="tenancy", action=action, actor_type="user",
        organization_id=org, outcome=outcome, details=json.dumps(details),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("details", "days"),
    [
        ({"audit_retention_days": 90}, 90),
        ({"settings": {"audit_retention_days": 30.0}}, 30),
        ({"changes": {"settings.audit_retention_days": {"old": 365, "new": 7}}}, 7),
        ({"retention_days": {"old": 1, "new": 400}}, 400),
        ({"deletion_retention_days": 10}, None),  # another setting
        ({"audit_retention_days": 0}, None),
        ({"audit_retention_days": 2.5}, None),
        ({"audit_retention_days": "90"}, None),
        ({"audit_retention_days": True}, None),
        ({"name": {"old": "a", "new": "b"}}, None),
    ],
)
def test_retention_is_read_from_organization_events(details, days):
    assert retention_days_of(org_update(details)) == days


def test_retention_only_from_successful_organization_events():
    details = {"audit_retention_days": 90}
    assert retention_days_of(org_update(details, action="tenancy.organization.create")) == 90
    assert retention_days_of(org_update(details, action="tenancy.workspace.update")) is None
    assert retention_days_of(org_update(details, outcome="DENIED")) is None
    assert retention_days_of(org_update(details, org="")) is None


def chain(key: ChainKey, n: int) -> list[Event]:
    out, prev = [], GENESIS
    for i in range(n):
        e = org_update({"i": i})
        e.id, e.sequence = f"e{i + 1}", i + 1
        key.link(e, prev)
        prev = e.hash
        out.append(e)
    return out


def walk(key: ChainKey, events: list[Event], last: int):
    w = ChainWalk(key, 1, GENESIS)
    for e in events:
        verdict = w.feed(e)
        if verdict is not None:
            return verdict
    return w.finish(last)


def test_walk_verdicts():
    key = ChainKey(b"k" * 32)
    events = chain(key, 5)
    assert walk(key, events, 5).ok and walk(key, events, 5).checked == 5
    edited = chain(key, 5)
    edited[2].actor_display = "mallory"
    assert (walk(key, edited, 5).failure, walk(key, edited, 5).failed_event_id) == ("EDITED", "e3")
    gap = events[:1] + events[2:]
    assert (walk(key, gap, 5).failure, walk(key, gap, 5).failed_sequence) == ("DELETED", 2)
    swapped = [events[0], events[2], events[1], *events[3:]]
    swapped[1].sequence, swapped[2].sequence = 2, 3
    assert (walk(key, swapped, 5).failure, walk(key, swapped, 5).failed_event_id) == ("REORDERED", "e3")
    assert (walk(key, chain(key, 3), 5).failure, walk(key, chain(key, 3), 5).failed_sequence) == (
        "TRUNCATED",
        4,
    )
    other = ChainKey(b"x" * 32)
    assert walk(other, chain(key, 2), 2).failure == "KEY_MISMATCH"
    assert walk(ChainKey(b"x" * 32, [b"k" * 32]), chain(key, 2), 2).ok


def test_keys_must_be_long_enough():
    with pytest.raises(ValueError):
        ChainKey(b"short")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=12),
    op=st.sampled_from(["edit", "delete", "swap", "truncate"]),
    data=st.data(),
)
def test_any_single_tampering_is_found_at_the_right_place(n, op, data):
    key = ChainKey(b"k" * 32)
    events = chain(key, n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1), label="position")
    if op == "edit":
        field = data.draw(st.sampled_from(["action", "actor_id", "details", "outcome", "occur_us"]))
        setattr(events[i], field, 7 if field == "occur_us" else "tampered")
        expected = ("EDITED", i + 1)
    elif op == "delete":
        del events[i]
        expected = ("DELETED", i + 1) if i < n - 1 else ("TRUNCATED", n)
    elif op == "swap":
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i), label="other")
        a, b = sorted((i, j))
        events[a], events[b] = events[b], events[a]
        events[a].sequence, events[b].sequence = a + 1, b + 1
        expected = ("REORDERED", a + 1)
    else:
        del events[i:]
        expected = ("TRUNCATED", i + 1)
    verdict = walk(key, events, n)
    assert not verdict.ok and (verdict.failure, verdict.failed_sequence) == expected
