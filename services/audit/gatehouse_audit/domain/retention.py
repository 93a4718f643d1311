"""Per-organization retention, learned from tenancy's own audit events.

Tenancy owns the organization setting ``settings.audit_retention_days``; audit
never calls tenancy for it. Instead, when a successful
``tenancy.organization.create`` or ``tenancy.organization.update`` event is
ingested whose details carry the setting, audit records the value for that
organization (in ``audit_retention``, in the same transaction as the event).
Accepted shapes of the details (the key may also be ``retention_days`` or a
dotted path ending in ``audit_retention_days``, at any depth)::

    {"audit_retention_days": 90}
    {"settings": {"audit_retention_days": 90}}
    {"changes": {"settings.audit_retention_days": {"old": 365, "new": 90}}}

Organizations without a recorded value, and the platform chain, use
``GATEHOUSE_AUDIT_RETENTION_DAYS`` (default 365).
"""

from __future__ import annotations

import json
from typing import Any

from gatehouse_audit.domain.model import Event

ACTIONS = ("tenancy.organization.create", "tenancy.organization.update")
DAY_US = 86_400 * 1_000_000
_MAX_DAYS = 36_500


def _is_key(key: str) -> bool:
    key = key.lower()
    return key in ("retention_days", "audit_retention_days") or key.endswith(".audit_retention_days")


def _value(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("new")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    days = int(value)
    return days if days == value and 0 < days <= _MAX_DAYS else None


def _find(node: Any, depth: int = 0) -> int | None:
    if depth > 6 or not isinstance(node, dict):
        return None
    for key, value in node.items():
        if _is_key(str(key)):
            found = _value(value)
            if found is not None:
                return found
    for value in node.values():
        found = _find(value, depth + 1)
        if found is not None:
            return found
    return None


def retention_days_of(event: Event) -> int | None:
    """The organization's new audit retention carried by ``event``, if it carries one."""
    if (
        event.service != "tenancy"  # the organization's settings are tenancy's (ingest checks who sent it)
        or event.action not in ACTIONS
        or event.outcome != "SUCCESS"
        or not event.organization_id
    ):
        return None
    try:
        return _find(json.loads(event.details))
    except ValueError:
        return None
