"""A plain evaluator written directly over relationship rows: no indexes, no caching.

It is the specification the in-memory index is tested against (slow on purpose:
every question scans every row).
"""

from __future__ import annotations

from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import Catalog


class Reference:
    def __init__(self, catalog: Catalog, rows: list[m.Tuple], states: list[m.State]):
        self.catalog, self.rows, self.states = catalog, rows, states

    def _state(self, kind: str, key: str) -> str | None:
        for s in self.states:
            if s.kind == kind and s.key == key:
                return s.value
        return None

    def parent(self, res):
        for t in self.rows:
            if t.relation == "parent" and t.resource == res:
                return t.subject
        return None

    def chain(self, res):
        out, cur = [], self.parent(res)
        while cur is not None and cur not in out and len(out) < 16:
            out.append(cur)
            cur = self.parent(cur)
        return out

    def org_of(self, res):
        if res[0] == "organization":
            return res[1]
        return next((a[1] for a in self.chain(res) if a[0] == "organization"), None)

    def groups(self, subject):
        if subject[0] != "user":
            return set()
        return {
            t.resource
            for t in self.rows
            if t.resource_type == "group" and t.relation == "member" and t.subject == subject
        }

    def direct_roles(self, subject, res):
        holders = {subject} | self.groups(subject)
        return {
            t.relation
            for t in self.rows
            if t.resource == res and t.subject in holders and t.relation not in ("parent", "grant")
        }

    def own_roles(self, subject, res):
        return {
            t.relation
            for t in self.rows
            if t.resource == res and t.subject == subject and t.relation not in ("parent", "grant")
        }

    def platform_admin(self, subject):
        return "platform_admin" in self.direct_roles(subject, ("platform", "platform"))

    def roles(self, subject, res, depth=0):
        found = set(self.direct_roles(subject, res))
        rtype = self.catalog.types[res[0]]
        parent = self.parent(res)
        if parent is not None and depth < 16:
            for prole in self.roles(subject, parent, depth + 1):
                if prole in rtype.implied:
                    found.add(rtype.implied[prole])
        if res != ("platform", "platform") and self.platform_admin(subject):
            found.add(rtype.top_role)
        return {r for r in found if r in rtype.adds}

    def denied(self, subject, res, amr):
        if self._state("disabled", f"{subject[0]}:{subject[1]}") == "1":
            return True
        if any(self._state("deleted", f"{r[0]}:{r[1]}") == "1" for r in [res, *self.chain(res)]):
            return True
        org = self.org_of(res)
        if org is None or subject[0] != "user":
            return False
        status = self._state("membership", f"{org}|{subject[1]}")
        if status not in (None, m.ACTIVE) and not self.platform_admin(subject):
            return True
        return self._state("require_mfa", org) == "1" and "otp" not in amr

    def capabilities(self, subject, res, amr=("pwd",)):
        if self.denied(subject, res, amr):
            return set()
        rtype = self.catalog.types[res[0]]
        caps = set()
        for role in self.roles(subject, res):
            caps |= rtype.role_caps[role]
        holders = {subject} | self.groups(subject)
        for t in self.rows:
            if t.relation != "grant" or t.resource != res:
                continue
            if t.subject in holders:
                caps.add(t.capability)
            elif (
                t.subject_type == "organization"
                and subject[0] == "user"
                and self._state("membership", f"{t.subject_id}|{subject[1]}") == m.ACTIVE
            ):
                caps.add(t.capability)
        return caps
