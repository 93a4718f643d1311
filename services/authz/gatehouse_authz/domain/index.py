"""The in-memory relationship index and the decision evaluator (the hot path).

Forward maps answer checks without any I/O; reverse maps (subject → resources,
resource → children, organization → members) make lookups cost what their
answer costs rather than what the whole data set costs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import PLATFORM, PLATFORM_ADMIN, Catalog

PLATFORM_REF: m.Ref = (PLATFORM, PLATFORM)
ORDER = {reason: i for i, reason in enumerate(m.REASON_ORDER)}


_DECISIONS: dict[tuple[bool, str], m.Decision] = {}


def _decision(allowed: bool, reason: str) -> m.Decision:
    """The (immutable) decision for ``allowed`` and ``reason``, made once: a check answers one of a
    handful, and a frozen dataclass costs more to build than the rest of a cached answer."""
    key = (allowed, reason)
    decision = _DECISIONS.get(key)
    if decision is None:
        decision = _DECISIONS[key] = m.Decision(allowed, reason)
    return decision


class UnknownType(ValueError):
    pass


class UnknownCapability(ValueError):
    pass


MAX_DEPTH = 16  # parents walked above a resource (roles_on's bound); deeper chains take the general path

SMALL = 8  # up to this many members a multimap value is a tuple (48 B + 8 B each), then a set


def _add(mapping: dict, key, value) -> None:
    """Add ``value`` to the collection at ``key``: a tuple while small, a set beyond :data:`SMALL`.

    Most keys hold a handful of values (a user's workspaces, a user's organizations), and a
    set costs at least 216 bytes; at a million relationships that difference is most of the
    index's memory.
    """
    have = mapping.get(key)
    if have is None:
        mapping[key] = (value,)
    elif type(have) is tuple:
        if value not in have:
            mapping[key] = have + (value,) if len(have) < SMALL else {*have, value}
    else:
        have.add(value)


def _discard(mapping: dict, key, value) -> None:
    have = mapping.get(key)
    if have is None:
        return
    if type(have) is tuple:
        if value in have:
            rest = tuple(v for v in have if v != value)
            if rest:
                mapping[key] = rest
            else:
                del mapping[key]
    else:
        have.discard(value)
        if not have:
            del mapping[key]


class Index:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.revision = 0
        # resource -> subject -> roles (interned frozensets: a million bindings share a handful of sets)
        self.roles: dict[m.Ref, dict[m.Ref, frozenset[str]]] = {}
        # Reverse maps (values are tuples while small, sets beyond; see _add):
        self.bound: dict[m.Ref, tuple | set] = {}  # subject -> resources with a role for it
        self.parent: dict[m.Ref, m.Ref] = {}
        self.children: dict[m.Ref, tuple | set] = {}  # parent -> children
        self.grants: dict[m.Ref, dict[m.Ref, set[str]]] = {}  # resource -> subject -> capabilities
        self.granted: dict[m.Ref, tuple | set] = {}  # subject -> resources granted to it
        self.by_type: dict[str, set[str]] = defaultdict(set)
        self.disabled: set[m.Ref] = set()  # subjects (a State's key "type:id" as a ref)
        self.membership: dict[tuple[str, str], str] = {}
        self.org_members: dict[str, tuple | set] = {}
        self.user_orgs: dict[str, tuple | set] = {}
        self.deleted: set[m.Ref] = set()  # resources (likewise)
        self.require_mfa: set[str] = set()
        self.member_of: dict[m.Ref, tuple | set] = {}  # user -> groups it is a member of
        self._refs: dict[m.Ref, m.Ref] = {}  # interned refs (one tuple object per resource/subject)
        self._role_sets: dict[frozenset[str], frozenset[str]] = {}  # interned role sets
        self._strings: dict[str, str] = {}  # interned ids and names

    def replace_with(self, other: Index) -> None:
        """Become ``other`` (a freshly loaded index) in one step: whoever holds this object sees
        the old contents or the new, never a mix or an empty index."""
        self.__dict__.update(other.__dict__)

    def _ref(self, rtype: str, rid: str) -> m.Ref:
        ref = (rtype, rid)
        found = self._refs.get(ref)
        if found is None:
            strings = self._strings
            found = (strings.setdefault(rtype, rtype), strings.setdefault(rid, rid))
            self._refs[found] = found
        return found

    def _roles_set(self, roles: frozenset[str]) -> frozenset[str]:
        return self._role_sets.setdefault(roles, roles)

    # ---- applying changes -------------------------------------------------
    def apply(self, changes: Iterable[m.Change], revision: int) -> None:
        for change in changes:
            item = change.item
            if isinstance(item, m.Tuple):
                self.put_row(
                    item.resource_type,
                    item.resource_id,
                    item.relation,
                    item.subject_type,
                    item.subject_id,
                    item.capability,
                    change.op == "put",
                )
            else:
                self._state(item, change.op == "put")
        self.revision = max(self.revision, revision)

    def load_rows(self, rows: Iterable[tuple], states: Iterable[tuple] = ()) -> int:
        """Bulk load: relationship rows ``(rtype, rid, relation, stype, sid, capability)`` and state
        rows ``(kind, key, value)``, straight from the database (no intermediate objects)."""
        count = 0
        put = self.put_row
        for row in rows:
            put(*row)
            count += 1
        for kind, key, value in states:
            self._state(m.State(kind, key, value), True)
            count += 1
        return count

    def _tuple(self, t: m.Tuple, put: bool) -> None:
        self.put_row(
            t.resource_type, t.resource_id, t.relation, t.subject_type, t.subject_id, t.capability, put
        )

    def put_row(
        self, rtype: str, rid: str, relation: str, stype: str, sid: str, cap: str = "", put=True
    ) -> None:
        res, sub = self._ref(rtype, rid), self._ref(stype, sid)
        if put:
            self.by_type[res[0]].add(res[1])
        if relation == "parent":
            if put:
                old = self.parent.get(res)
                if old is not None and old != sub:
                    _discard(self.children, old, res)
                self.parent[res] = sub
                _add(self.children, sub, res)
                self.by_type[sub[0]].add(sub[1])
            elif self.parent.get(res) == sub:
                del self.parent[res]
                _discard(self.children, sub, res)
        elif relation == "grant":
            if put:
                self.grants.setdefault(res, {}).setdefault(sub, set()).add(self._strings.setdefault(cap, cap))
                _add(self.granted, sub, res)
            else:
                caps = self.grants.get(res, {}).get(sub)
                if caps is None:
                    return
                caps.discard(cap)
                if not caps:
                    del self.grants[res][sub]
                    if not self.grants[res]:
                        del self.grants[res]
                    _discard(self.granted, sub, res)
        else:
            bindings = self.roles.get(res)
            if bindings is None:
                if not put:
                    return
                bindings = self.roles[res] = {}
            have = bindings.get(sub, frozenset())
            now = have | {relation} if put else have - {relation}
            if now:
                bindings[sub] = self._roles_set(now)
                _add(self.bound, sub, res)
            else:
                bindings.pop(sub, None)
                _discard(self.bound, sub, res)
                if not bindings:
                    del self.roles[res]
            if rtype == "group" and relation == "member":
                if put:
                    _add(self.member_of, sub, res)
                else:
                    _discard(self.member_of, sub, res)

    def _state(self, s: m.State, put: bool) -> None:
        if s.kind == "membership":
            strings = self._strings
            org, user = (strings.setdefault(x, x) for x in s.key.split("|", 1))
            if put:
                self.membership[(org, user)] = strings.setdefault(s.value, s.value)
                _add(self.org_members, org, user)
                _add(self.user_orgs, user, org)
            else:
                self.membership.pop((org, user), None)
                _discard(self.org_members, org, user)
                _discard(self.user_orgs, user, org)
            return
        if s.kind == "require_mfa":
            target, key = self.require_mfa, s.key
        else:  # "disabled" or "deleted": keyed "type:id", held as the ref (no string built per check)
            target = {"disabled": self.disabled, "deleted": self.deleted}[s.kind]
            rtype, _, rid = s.key.partition(":")
            key = self._ref(rtype, rid)
        if put and s.value == "1":
            target.add(key)
        else:
            target.discard(key)

    # ---- queries ----------------------------------------------------------
    def validate(self, resource_type: str, capability: str | None = None) -> None:
        t = self.catalog.type(resource_type)
        if t is None:
            raise UnknownType(resource_type)
        if capability is not None and capability not in t.capabilities:
            raise UnknownCapability(capability)

    def ancestors(self, res: m.Ref) -> list[m.Ref]:
        chain, seen = [], set()
        cur = self.parent.get(res)
        while cur is not None and cur not in seen:
            chain.append(cur)
            seen.add(cur)
            cur = self.parent.get(cur)
        return chain

    def organization_of(self, res: m.Ref) -> str | None:
        if res[0] == "organization":
            return res[1]
        for anc in self.ancestors(res):
            if anc[0] == "organization":
                return anc[1]
        return None

    def groups_of(self, subject: m.Ref) -> set[m.Ref] | tuple:
        if subject[0] != "user":
            return ()
        return self.member_of.get(subject, ())

    def is_platform_admin(self, subject: m.Ref) -> bool:
        bindings = self.roles.get(PLATFORM_REF)
        if not bindings:
            return False
        held = bindings.get(subject)
        if held and PLATFORM_ADMIN in held:
            return True
        if subject[0] != "user":
            return False
        for group in self.member_of.get(subject, ()):
            held = bindings.get(group)
            if held and PLATFORM_ADMIN in held:
                return True
        return False

    def _direct_and_group_roles(self, subject: m.Ref, res: m.Ref) -> dict[str, str]:
        found: dict[str, str] = {}
        bindings = self.roles.get(res)
        if not bindings:
            return found
        for role in bindings.get(subject, ()):
            found[role] = m.ROLE
        if subject[0] != "user":  # groups_of, inline (the hot path)
            return found
        for group in self.member_of.get(subject, ()):
            for role in bindings.get(group, ()):
                found.setdefault(role, m.GROUP_ROLE)
        return found

    def roles_on(
        self,
        subject: m.Ref,
        res: m.Ref,
        _depth: int = 0,
        admin: bool | None = None,
    ) -> dict[str, str]:
        """Every role the subject holds on ``res`` with how it holds it (best reason per role)."""
        if admin is None:
            admin = self.is_platform_admin(subject)
        found = self._direct_and_group_roles(subject, res)
        parent = self.parent.get(res)
        rtype = self.catalog.types.get(res[0])
        if parent is not None and rtype is not None and _depth < MAX_DEPTH:
            for prole, preason in self.roles_on(subject, parent, _depth + 1, admin).items():
                implied = rtype.implied.get(prole)
                if implied:
                    reason = m.PLATFORM_ROLE if preason == m.PLATFORM_ROLE else m.INHERITED_ROLE
                    if found.get(implied) in (None, m.PLATFORM_ROLE):
                        found[implied] = reason
        if admin and rtype is not None and res != PLATFORM_REF:
            found.setdefault(rtype.top_role, m.PLATFORM_ROLE)
        return found

    def _grant_reason(self, subject: m.Ref, res: m.Ref) -> dict[str, str]:
        """Capabilities granted on ``res`` to the subject, its groups or its organizations, each with
        its best reason (DIRECT_GRANT, GROUP_GRANT, ORGANIZATION_GRANT)."""
        out: dict[str, str] = {}
        grants = self.grants.get(res)
        if not grants:
            return out
        for cap in grants.get(subject, ()):
            out[cap] = m.DIRECT_GRANT
        for group in self.groups_of(subject):
            for cap in grants.get(group, ()):
                out.setdefault(cap, m.GROUP_GRANT)
        if subject[0] == "user":
            for (stype, sid), caps in grants.items():
                if stype == "organization" and self.membership.get((sid, subject[1])) == m.ACTIVE:
                    for cap in caps:
                        out.setdefault(cap, m.ORGANIZATION_GRANT)
        return out

    def _precheck(self, subject: m.Ref, res: m.Ref, amr: Iterable[str], chain=None) -> str | None:
        if subject in self.disabled:
            return m.SUBJECT_DISABLED
        if chain is None:
            chain = self.ancestors(res)
        deleted = self.deleted
        if deleted and (res in deleted or not deleted.isdisjoint(chain)):
            return m.RESOURCE_DELETED
        if subject[0] != "user":
            return None
        if res[0] == "organization":
            org = res[1]
        else:
            for anc in chain:  # the nearest organization ancestor
                if anc[0] == "organization":
                    org = anc[1]
                    break
            else:
                return None
        status = self.membership.get((org, subject[1]))
        if status is not None and status != m.ACTIVE and not self.is_platform_admin(subject):
            return m.MEMBERSHIP_INACTIVE
        if self.require_mfa and org in self.require_mfa and "otp" not in amr:
            return m.MFA_REQUIRED
        return None

    def check(self, subject: m.Ref, res: m.Ref, capability: str, amr: Iterable[str] = ()) -> m.Decision:
        """The decision, the best reason first (ROLE, GROUP_ROLE, INHERITED_ROLE, PLATFORM_ROLE, then
        the grants). The hot path: one walk up the parents, shared by the state checks and the
        inherited roles, no intermediate dicts; ``_check_general`` (the same rules written over
        ``roles_on``) answers for platform admins and for parent chains deeper than MAX_DEPTH."""
        types = self.catalog.types
        rtype = types.get(res[0])
        if rtype is None:
            raise UnknownType(res[0])
        if capability not in rtype.capabilities:
            raise UnknownCapability(capability)
        parent = self.parent
        chain = []
        p = parent.get(res)
        while p is not None:
            if len(chain) == MAX_DEPTH:  # a cycle or an unusually deep tree
                return self._check_general(subject, res, capability, amr)
            chain.append(p)
            p = parent.get(p)
        denied = self._precheck(subject, res, amr, chain)
        if denied:
            return _decision(False, denied)
        role_caps = rtype.role_caps
        roles = self.roles
        is_user = subject[0] == "user"
        groups = self.member_of.get(subject, ()) if is_user else ()
        # A direct role on the resource ranks first, a group's role second.
        bindings = roles.get(res)
        if bindings:
            held = bindings.get(subject)
            if held:
                for role in held:
                    if capability in role_caps[role]:
                        return _decision(True, m.ROLE)
            for group in groups:
                held = bindings.get(group)
                if held:
                    for role in held:
                        if capability in role_caps[role]:
                            return _decision(True, m.GROUP_ROLE)
        # Roles implied from the parents, from the top down (a parent of unknown type ends the
        # walk above it). Platform roles are not part of this walk: they rank after it.
        if chain:
            top = len(chain)
            for i, ref in enumerate(chain):
                if types.get(ref[0]) is None:
                    top = i + 1
                    break
            carried: Iterable[str] = ()  # roles implied on the level below the one walked
            for i in range(top - 1, -1, -1):
                ref = chain[i]
                here = set()
                bindings = roles.get(ref)
                if bindings:
                    held = bindings.get(subject)
                    if held:
                        here.update(held)
                    for group in groups:
                        held = bindings.get(group)
                        if held:
                            here.update(held)
                here.update(carried)
                implied = (types[chain[i - 1][0]] if i else rtype).implied
                carried = [implied[r] for r in here if r in implied]
            for role in carried:
                if capability in role_caps[role]:
                    return _decision(True, m.INHERITED_ROLE)
        if self.is_platform_admin(subject):
            return self._check_general(subject, res, capability, amr)
        granted = self._grant_reason(subject, res).get(capability)
        return _decision(True, granted) if granted else _decision(False, m.NO_RELATIONSHIP)

    def _check_general(
        self, subject: m.Ref, res: m.Ref, capability: str, amr: Iterable[str] = ()
    ) -> m.Decision:
        """``check`` written over ``roles_on`` (every role with its reason): the rules once, plainly."""
        rtype = self.catalog.types[res[0]]
        denied = self._precheck(subject, res, amr)
        if denied:
            return _decision(False, denied)
        best = _best_reason(self.roles_on(subject, res), rtype.role_caps, capability)
        if best is not None:
            return _decision(True, best)
        granted = self._grant_reason(subject, res).get(capability)
        return _decision(True, granted) if granted else _decision(False, m.NO_RELATIONSHIP)

    def access(self, subject: m.Ref, res: m.Ref, amr: Iterable[str] = ()) -> m.Access:
        self.validate(res[0])
        # a disabled platform admin is none (a frontend gates its admin UI on this flag)
        is_admin = subject not in self.disabled and self.is_platform_admin(subject)
        rtype = self.catalog.types[res[0]]
        own = self.catalog.highest(res[0], self.roles.get(res, {}).get(subject, ()))
        if self._precheck(subject, res, amr):
            return m.Access(own, is_admin, "", ())
        roles = self.roles_on(subject, res)
        caps: set[str] = set()
        for role in roles:
            caps |= rtype.role_caps[role]
        caps |= set(self._grant_reason(subject, res))
        return m.Access(own, is_admin, self.catalog.highest(res[0], roles), tuple(sorted(caps)))

    def lookup_resources(
        self,
        subject: m.Ref,
        rtype: str,
        capability: str,
        parent: m.Ref | None = None,
        amr: Iterable[str] = (),
    ) -> list[str]:
        self.validate(rtype, capability)
        if self.is_platform_admin(subject):
            # Everything of the type that still has a relationship (ids seen once and since removed
            # entirely, e.g. purged workspaces, are not resources any more).
            candidates = {ref for rid in self.by_type.get(rtype, ()) if self._exists(ref := (rtype, rid))}
        else:
            candidates = self._reachable(subject, rtype)
        if parent is not None:
            candidates = {c for c in candidates if parent in self.ancestors(c)}
        return sorted(
            rid for (t, rid) in candidates if self.check(subject, (t, rid), capability, amr).allowed
        )

    def _exists(self, ref: m.Ref) -> bool:
        return ref in self.roles or ref in self.parent or ref in self.children or ref in self.grants

    def _reachable(self, subject: m.Ref, rtype: str) -> set[m.Ref]:
        """Resources of ``rtype`` where some role or grant of the subject may apply.

        Starts from the subject's own bindings and grants (and those of its groups
        and active organizations) and descends to children only through roles the
        catalog implies on the child type, so the walk costs what the answer costs:
        an organization member whose role implies nothing below is never expanded
        into the organization's workspaces.
        """
        holders = [subject, *self.groups_of(subject)]
        frontier: dict[m.Ref, set[str]] = {}
        candidates: set[m.Ref] = set()
        for holder in holders:
            for res in self.bound.get(holder, ()):
                frontier.setdefault(res, set()).update(self.roles.get(res, {}).get(holder, ()))
            for res in self.granted.get(holder, ()):
                if res[0] == rtype:
                    candidates.add(res)
        if subject[0] == "user":
            for org in self.user_orgs.get(subject[1], ()):
                if self.membership.get((org, subject[1])) == m.ACTIVE:
                    candidates |= {r for r in self.granted.get(("organization", org), ()) if r[0] == rtype}
        done: dict[m.Ref, set[str]] = {}
        stack = list(frontier.items())
        while stack:
            ref, roles = stack.pop()
            seen = done.setdefault(ref, set())
            new = roles - seen
            if not new and seen:
                continue
            seen |= new
            if ref[0] == rtype:
                candidates.add(ref)
            for child in self.children.get(ref, ()):
                ctype = self.catalog.type(child[0])
                if ctype is None:
                    continue
                implied = {ctype.implied[r] for r in new if r in ctype.implied}
                if implied:
                    stack.append((child, implied))
        return candidates

    def lookup_subjects(self, res: m.Ref, capability: str) -> list[str]:
        self.validate(res[0], capability)
        users: set[str] = set()
        for ref in (res, *self.ancestors(res)):
            for sub in list(self.roles.get(ref, {})) + list(self.grants.get(ref, {})):
                users |= self._users_of(sub)
        for sub in self.roles.get(PLATFORM_REF, {}):
            users |= self._users_of(sub)
        return sorted(u for u in users if self.check(("user", u), res, capability, ("pwd", "otp")).allowed)

    def _users_of(self, sub: m.Ref) -> set[str]:
        if sub[0] == "user":
            return {sub[1]}
        if sub[0] == "group":
            return {
                u for (t, u), roles in self.roles.get(sub, {}).items() if t == "user" and "member" in roles
            }
        if sub[0] == "organization":
            return {
                u for u in self.org_members.get(sub[1], ()) if self.membership.get((sub[1], u)) == m.ACTIVE
            }
        return set()

    def tuples(self) -> Iterable[m.Tuple]:
        """Every relationship tuple (for reads and filtered deletes)."""
        for res, subs in self.roles.items():
            for sub, roles in subs.items():
                for role in roles:
                    yield m.Tuple(res[0], res[1], role, sub[0], sub[1])
        for res, par in self.parent.items():
            yield m.Tuple(res[0], res[1], "parent", par[0], par[1])
        for res, subs in self.grants.items():
            for sub, caps in subs.items():
                for cap in caps:
                    yield m.Tuple(res[0], res[1], "grant", sub[0], sub[1], cap)

    # ---- explanations (only when a caller asks; not on the hot path) -------
    def explain(self, subject: m.Ref, res: m.Ref, capability: str, amr: Iterable[str] = ()) -> list[m.Step]:
        """The path that allows the check, or every reason nothing did."""
        decision = self.check(subject, res, capability, amr)
        who, what = _text(subject), _text(res)
        if not decision.allowed and decision.reason != m.NO_RELATIONSHIP:
            return [self._denial_step(decision.reason, subject, res, amr)]
        if decision.reason in m.REASON_ORDER:
            rtype = self.catalog.types[res[0]]
            for role, path in sorted(
                self._role_paths(subject, res).items(), key=lambda rp: rtype.rank(rp[0])
            ):
                if capability in rtype.role_caps[role] and path[-1].reason == decision.reason:
                    return [*path, m.Step(f"role {role} on {res[0]} holds {capability}", "", decision.reason)]
        if decision.allowed:
            return self._grant_path(subject, res, capability, decision.reason)
        steps = []
        rtype = self.catalog.types[res[0]]
        for role, path in self._role_paths(subject, res).items():
            steps += path
            steps.append(m.Step(f"role {role} on {what} lacks {capability}", "", m.NO_RELATIONSHIP))
        holding = [r for r in rtype.roles if capability in rtype.role_caps[r]]
        groups = sorted(_text(g) for g in self.groups_of(subject))
        steps.append(
            m.Step(
                f"{who} holds none of the roles with {capability} on {what} ({', '.join(holding)}), "
                f"directly, through its groups {groups or '[]'} or through a parent",
                "",
                m.NO_RELATIONSHIP,
            )
        )
        steps.append(
            m.Step(
                f"no grant of {capability} on {what} to {who}, its groups or its organizations",
                "",
                m.NO_RELATIONSHIP,
            )
        )
        return steps

    def _denial_step(self, reason: str, subject: m.Ref, res: m.Ref, amr: Iterable[str]) -> m.Step:
        who = _text(subject)
        if reason == m.SUBJECT_DISABLED:
            return m.Step(f"{who} is disabled", "", reason)
        if reason == m.RESOURCE_DELETED:
            gone = next(r for r in (res, *self.ancestors(res)) if r in self.deleted)
            where = "" if gone == res else f" (a parent of {_text(res)})"
            return m.Step(f"{_text(gone)} is deleted{where}", "", reason)
        org = self.organization_of(res)
        if reason == m.MEMBERSHIP_INACTIVE:
            status = self.membership.get((org, subject[1]), "")
            return m.Step(f"membership of {who} in organization:{org} is {status}", "", reason)
        return m.Step(
            f"organization:{org} requires MFA and the session's amr {sorted(amr)} has no second factor",
            "",
            reason,
        )

    def _role_paths(self, subject: m.Ref, res: m.Ref, depth: int = 0) -> dict[str, list[m.Step]]:
        """One path per role the subject holds on ``res`` (the best reason first)."""
        paths: dict[str, list[m.Step]] = {}
        bindings = self.roles.get(res, {})
        for role in bindings.get(subject, ()):
            rel = f"{_text(res)}#{role}@{_text(subject)}"
            paths[role] = [m.Step(f"{_text(subject)} is {role} of {_text(res)}", rel, m.ROLE)]
        for group in sorted(self.groups_of(subject)):
            for role in bindings.get(group, ()):
                paths.setdefault(
                    role,
                    [
                        m.Step(
                            f"{_text(subject)} is a member of {_text(group)}",
                            f"{_text(group)}#member@{_text(subject)}",
                            m.GROUP_ROLE,
                        ),
                        m.Step(
                            f"{_text(group)} is {role} of {_text(res)}",
                            f"{_text(res)}#{role}@{_text(group)}",
                            m.GROUP_ROLE,
                        ),
                    ],
                )
        parent = self.parent.get(res)
        rtype = self.catalog.type(res[0])
        if parent is not None and rtype is not None and depth < 16:
            for prole, ppath in self._role_paths(subject, parent, depth + 1).items():
                implied = rtype.implied.get(prole)
                if implied and implied not in paths:
                    reason = m.PLATFORM_ROLE if ppath[-1].reason == m.PLATFORM_ROLE else m.INHERITED_ROLE
                    paths[implied] = [
                        *ppath,
                        m.Step(
                            f"{_text(res)} has parent {_text(parent)}; {prole} there implies {implied} here",
                            f"{_text(res)}#parent@{_text(parent)}",
                            reason,
                        ),
                    ]
        if rtype is not None and res != PLATFORM_REF and self.is_platform_admin(subject):
            paths.setdefault(
                rtype.top_role,
                [
                    m.Step(
                        f"{_text(subject)} is platform_admin (implies {rtype.top_role} on every {res[0]})",
                        f"platform:platform#platform_admin@{_text(subject)}",
                        m.PLATFORM_ROLE,
                    )
                ],
            )
        return paths

    def _grant_path(self, subject: m.Ref, res: m.Ref, capability: str, reason: str) -> list[m.Step]:
        grants = self.grants.get(res, {})
        rel = lambda holder: f"{_text(res)}#grant:{capability}@{_text(holder)}"  # noqa: E731
        if reason == m.DIRECT_GRANT:
            return [
                m.Step(f"{capability} on {_text(res)} is granted to {_text(subject)}", rel(subject), reason)
            ]
        if reason == m.GROUP_GRANT:
            group = next(g for g in sorted(self.groups_of(subject)) if capability in grants.get(g, ()))
            return [
                m.Step(
                    f"{_text(subject)} is a member of {_text(group)}",
                    f"{_text(group)}#member@{_text(subject)}",
                    reason,
                ),
                m.Step(f"{capability} on {_text(res)} is granted to {_text(group)}", rel(group), reason),
            ]
        org = next(
            o
            for o, caps in sorted(grants.items())
            if o[0] == "organization"
            and capability in caps
            and self.membership.get((o[1], subject[1])) == m.ACTIVE
        )
        return [
            m.Step(f"{_text(subject)} is an active member of {_text(org)}", "", reason),
            m.Step(f"{capability} on {_text(res)} is granted to {_text(org)}", rel(org), reason),
        ]


def _best_reason(roles: dict[str, str], role_caps: dict[str, frozenset[str]], capability: str) -> str | None:
    """The best reason (ORDER) among the roles that carry ``capability``; None if none does."""
    best = None
    for role, reason in roles.items():
        if capability in role_caps[role] and (best is None or ORDER[reason] < ORDER[best]):
            best = reason
    return best


def _text(ref: m.Ref) -> str:
    return f"{ref[0]}:{ref[1]}"
