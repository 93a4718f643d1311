"""AuthzService over gRPC: validate, apply the caller rules, call the index or store, convert."""

from __future__ import annotations

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import authz_service_pb2_grpc, catalog_pb2, decision_pb2, relationship_pb2
from gatehouse.kit import audit_log, errors
from gatehouse.kit.errors import ErrorCollector
from gatehouse.kit.interceptors import require_principal, require_service_account
from gatehouse.kit.pagination import decode_token, encode_token, page_after, page_size
from gatehouse.type.v1 import refs_pb2
from gatehouse_authz.adapters.follower import Follower, shielded
from gatehouse_authz.adapters.store import ChangeLogCompacted, Filter, Store
from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.index import Index, UnknownCapability, UnknownType

Op = relationship_pb2.RelationshipUpdate.Operation
STATUS = {
    relationship_pb2.MEMBERSHIP_STATUS_INVITED: m.INVITED,
    relationship_pb2.MEMBERSHIP_STATUS_ACTIVE: m.ACTIVE,
    relationship_pb2.MEMBERSHIP_STATUS_INACTIVE: m.INACTIVE,
}
MAX_BATCH = 1000
MAX_ID = 128  # the store's id columns (resource, subject, organization and user ids)
MAX_REQUEST_ID = 100  # stored with the caller and the method in a 200-character key
DEFAULT_WAIT = 5.0  # seconds a call without a deadline waits for at_least_revision
DEADLINE_MARGIN = 0.1  # answer UNAVAILABLE this long before the caller's deadline (a busy server is late)
AUDIT_DETAIL_LIMIT = 50  # relationships listed in one audit event's details
SERVICE = "authz"
WATCH_IDLE = 1.0  # a watcher re-reads the change log at least this often


def _ref(msg, field: str, errs: ErrorCollector) -> m.Ref:
    errs.require(bool(msg.type), f"{field}.type", "is required")
    errs.require(bool(msg.id), f"{field}.id", "is required")
    _fits(msg.id, f"{field}.id", errs)
    return (msg.type, msg.id)


def _fits(value: str, field: str, errs: ErrorCollector) -> bool:
    """Whether ``value`` fits the store's id columns; a field violation when it does not."""
    errs.require(fits := len(value) <= MAX_ID, field, f"must be at most {MAX_ID} characters")
    return fits


def _filter(f, field: str, errs: ErrorCollector) -> Filter:
    """A relationship filter; an id needs its type (``subject_id`` alone would match a user and a
    group of that id alike)."""
    errs.require(
        not f.resource_id or bool(f.resource_type), f"{field}.resource_type", "is required with resource_id"
    )
    errs.require(
        not f.subject_id or bool(f.subject_type), f"{field}.subject_type", "is required with subject_id"
    )
    return Filter(f.resource_type, f.resource_id, f.relation, f.subject_type, f.subject_id)


def _subject(msg, field: str, errs: ErrorCollector) -> m.Ref:
    ref = _ref(msg, field, errs)
    if msg.type:
        errs.require(
            msg.type in m.SUBJECT_TYPES, f"{field}.type", f"must be one of {', '.join(m.SUBJECT_TYPES)}"
        )
    return ref


REASONS = {
    name.removeprefix("DECISION_REASON_"): number for name, number in decision_pb2.DecisionReason.items()
}


_ITEM_FIELDS = [f"items[{i}]." for i in range(MAX_BATCH)]  # field paths of a batch's items


def _reason(name: str) -> int:
    return REASONS[name]


def _invalid(exc: UnknownType | UnknownCapability, field: str = "", type_field: str = "resource.type"):
    """The field violation for an unknown resource type or capability (``field``: the item's path)."""
    if isinstance(exc, UnknownType):
        return errors.InvalidArgument.field(f"{field}{type_field}", f"unknown resource type {exc}")
    return errors.InvalidArgument.field(
        f"{field}capability", f"unknown capability {exc} for this resource type"
    )


class AuthzServicer(authz_service_pb2_grpc.AuthzServiceServicer):
    def __init__(self, index: Index, store: Store, follower: Follower):
        self.index = index
        self.store = store
        self.follower = follower

    # ---- shared steps -----------------------------------------------------
    def _is_platform_admin(self, principal) -> bool:
        """A user principal who is platform_admin and not disabled."""
        user = ("user", principal.id)
        return (
            principal.kind == "user"
            and self.index.is_platform_admin(user)
            and user not in self.index.disabled
        )

    def _authorize_subject(self, subject: m.Ref) -> None:
        """Service accounts may ask about anyone, users about themselves, platform admins about anyone."""
        principal = require_principal()
        if principal.is_service or subject == ("user", principal.id):
            return
        if self._is_platform_admin(principal):
            return
        raise errors.PermissionDenied(
            "users may only check their own access",
            reason="CAPABILITY_DENIED",
            metadata={"subject": f"{subject[0]}:{subject[1]}"},
        )

    async def _consistent(self, consistency, context) -> None:
        which = consistency.WhichOneof("requirement")
        if which == "at_least_revision":
            remaining = context.time_remaining()
            # Answer UNAVAILABLE just before the caller's deadline, so it learns why (never a stale allow).
            wait = (
                DEFAULT_WAIT
                if remaining is None
                else max(0.0, remaining - min(DEADLINE_MARGIN, remaining / 4))
            )
            await self.follower.wait_for(consistency.at_least_revision, wait)
        elif which == "fully_consistent":
            await self.follower.catch_up()

    def _evaluate(self, fn, *args, field: str = "", type_field: str = "resource.type"):
        try:
            return fn(*args)
        except (UnknownType, UnknownCapability) as exc:
            raise _invalid(exc, field, type_field) from None

    def _admit(
        self,
        item: pb.CheckCapabilityRequest,
        field: str = "",
        service_caller: bool = False,
        capability: str | None = None,
    ) -> tuple[m.Ref, m.Ref]:
        """Validate one check and apply the caller rules (a service account, ``service_caller``,
        may ask about anyone); returns (subject, resource). ``capability``: the item's, when the
        caller has read it already."""
        s, r = item.subject, item.resource
        stype, sid, rtype, rid = s.type, s.id, r.type, r.id
        if capability is None:
            capability = item.capability
        if not (sid and rtype and rid and capability and stype in m.SUBJECT_TYPES):
            errs = ErrorCollector()  # the slow path only names the bad fields
            _subject(s, f"{field}subject", errs)
            _ref(r, f"{field}resource", errs)
            errs.require(bool(item.capability), f"{field}capability", "is required")
            errs.raise_if_any()
        subject = (stype, sid)
        if not service_caller:
            self._authorize_subject(subject)
        return subject, (rtype, rid)

    def _check(
        self,
        item: pb.CheckCapabilityRequest,
        field: str = "",
        answer: pb.CheckCapabilityResponse | None = None,
        service_caller: bool = False,
    ) -> pb.CheckCapabilityResponse:
        """Decide one check into ``answer`` (a new message, or one of a batch's results)."""
        capability = item.capability  # each read of a message field makes a new str: read once
        subject, resource = self._admit(item, field, service_caller, capability)
        # An unset authentication context has no methods (HasField is cheaper than reading it).
        amr = tuple(item.authentication_context.amr) if item.HasField("authentication_context") else ()
        try:
            decision = self.index.check(subject, resource, capability, amr)
        except (UnknownType, UnknownCapability) as exc:
            raise _invalid(exc, field) from None
        # Fields set one by one: half the cost of the keyword constructor, the same message.
        if answer is None:
            answer = pb.CheckCapabilityResponse()
        answer.allowed = decision.allowed
        answer.reason = REASONS[decision.reason]
        answer.revision = self.index.revision
        if item.explain:
            answer.explanation.steps.extend(
                decision_pb2.ExplanationStep(
                    description=f"{step.relationship}: {step.description}"
                    if step.relationship
                    else step.description,
                    relationship=step.relationship,
                    reason=_reason(step.reason),
                )
                for step in self.index.explain(subject, resource, capability, amr)
            )
        return answer

    def _require_service_or_platform_admin(self) -> None:
        principal = require_principal()
        if not principal.is_service and not self._is_platform_admin(principal):
            raise errors.PermissionDenied(
                "service accounts and platform admins only", reason="CAPABILITY_DENIED"
            )

    def _request_key(self, method: str, request_id: str) -> str:
        """Idempotency key: the same request id from another caller or RPC is a different request."""
        if not request_id:
            return ""
        if len(request_id) > MAX_REQUEST_ID:
            raise errors.InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")
        return f"{require_principal().subject}|{method}|{request_id}"

    def _audit(self, action: str, items: list, revision_detail: dict | None = None, target=None):
        """An ``after_write`` hook writing one audit event in the write's transaction."""
        texts = [
            item.text() if isinstance(item, m.Tuple) else f"{item.kind}:{item.key}={item.value}"
            for item in items
        ]
        orgs = {self._organization_of_item(item) for item in items} - {None}

        async def record(session, revision: int) -> None:
            details = {
                "revision": revision,
                "count": len(items),
                "changes": texts[:AUDIT_DETAIL_LIMIT],
                **(revision_detail or {}),
            }
            await audit_log.record(
                session,
                service=SERVICE,
                action=action,
                organization_id=next(iter(orgs)) if len(orgs) == 1 else "",
                target=target,
                details=details,
            )

        return record

    def _organization_of_item(self, item) -> str | None:
        if isinstance(item, m.Tuple):
            if item.relation == "parent" and item.subject_type == "organization":
                return item.subject_id
            return self.index.organization_of(item.resource)
        if item.kind == "membership":
            return item.key.split("|", 1)[0]
        if item.kind == "require_mfa":
            return item.key
        if item.kind == "deleted":
            rtype, _, rid = item.key.partition(":")
            return self.index.organization_of((rtype, rid))
        return None

    # ---- checks -----------------------------------------------------------
    async def CheckCapability(self, request, context):
        if request.HasField("consistency"):
            self._admit(request)  # a bad or forbidden request is refused before any wait
            await self._consistent(request.consistency, context)
        return self._check(request)

    async def CheckCapabilities(self, request, context):
        if len(request.items) > MAX_BATCH:
            raise errors.InvalidArgument.field("items", f"at most {MAX_BATCH} checks per call")
        consistency = _batch_consistency(request)
        if consistency.WhichOneof("requirement"):
            for i, item in enumerate(request.items):
                self._admit(item, _ITEM_FIELDS[i])
            await self._consistent(consistency, context)
        # The answers are filled in place (no copy into the response), the caller rule is asked
        # once for a service account (who may ask about anyone) and field paths are made only
        # for a bad item.
        response = pb.CheckCapabilitiesResponse()
        add, service_caller = response.results.add, require_principal().is_service
        for i, item in enumerate(request.items):
            self._check(item, _ITEM_FIELDS[i], add(), service_caller)
        response.revision = self.index.revision
        return response

    async def GetAccess(self, request, context):
        errs = ErrorCollector()
        subject, resource = (
            _subject(request.subject, "subject", errs),
            _ref(request.resource, "resource", errs),
        )
        errs.raise_if_any()
        self._authorize_subject(subject)
        await self._consistent(request.consistency, context)
        access = self._evaluate(
            self.index.access, subject, resource, tuple(request.authentication_context.amr)
        )
        return pb.GetAccessResponse(
            member_role=access.member_role,
            is_platform_admin=access.is_platform_admin,
            effective_role=access.effective_role,
            capabilities=list(access.capabilities),
            revision=self.index.revision,
        )

    async def LookupResources(self, request, context):
        errs = ErrorCollector()
        subject = _subject(request.subject, "subject", errs)
        errs.require(bool(request.resource_type), "resource_type", "is required")
        errs.require(bool(request.capability), "capability", "is required")
        parent = None
        if request.parent.type or request.parent.id:  # a filter given by halves is refused, not dropped
            parent = _ref(request.parent, "parent", errs)
            if request.parent.type:
                errs.require(
                    self.index.catalog.type(request.parent.type) is not None,
                    "parent.type",
                    f"unknown resource type {request.parent.type!r}",
                )
        errs.raise_if_any()
        self._authorize_subject(subject)
        size = page_size(request.page_size, default=100)
        await self._consistent(request.consistency, context)
        ids = self._evaluate(
            self.index.lookup_resources,
            subject,
            request.resource_type,
            request.capability,
            parent,
            tuple(request.authentication_context.amr),
            type_field="resource_type",
        )
        page, token = page_after(ids, request.page_token, size)
        return pb.LookupResourcesResponse(
            resource_ids=page, next_page_token=token, revision=self.index.revision
        )

    async def LookupSubjects(self, request, context):
        self._require_service_or_platform_admin()
        errs = ErrorCollector()
        resource = _ref(request.resource, "resource", errs)
        errs.require(bool(request.capability), "capability", "is required")
        errs.raise_if_any()
        size = page_size(request.page_size, default=100)
        await self._consistent(request.consistency, context)
        ids = self._evaluate(self.index.lookup_subjects, resource, request.capability)
        page, token = page_after(ids, request.page_token, size)
        return pb.LookupSubjectsResponse(user_ids=page, next_page_token=token, revision=self.index.revision)

    # ---- writes -----------------------------------------------------------
    def _update(self, i: int, u, errs: ErrorCollector) -> tuple[str, m.Tuple | m.State] | None:
        where = f"updates[{i}]"
        op = {Op.OPERATION_TOUCH: "touch", Op.OPERATION_CREATE: "create", Op.OPERATION_DELETE: "delete"}.get(
            u.operation
        )
        if op is None:
            errs.add(f"{where}.operation", "must be TOUCH, CREATE or DELETE")
            return None
        kind = u.WhichOneof("item")
        if kind == "relationship":
            r = u.relationship
            t = m.Tuple(
                r.resource.type, r.resource.id, r.relation, r.subject.type, r.subject.id, r.capability
            )
            return (op, t) if self._valid_tuple(t, f"{where}.relationship", errs) else None
        if kind == "subject_state":
            ref = u.subject_state.subject
            before = len(errs.violations)
            _subject(ref, f"{where}.subject_state.subject", errs)
            if len(errs.violations) > before:
                return None
            return op, m.State("disabled", f"{ref.type}:{ref.id}", "1" if u.subject_state.disabled else "0")
        if kind == "membership_state":
            ms = u.membership_state
            status = STATUS.get(ms.status)
            if not ms.organization_id or not ms.user_id or (status is None and op != "delete"):
                errs.add(f"{where}.membership_state", "needs organization_id, user_id and a status")
                return None
            org_fits = _fits(ms.organization_id, f"{where}.membership_state.organization_id", errs)
            if not (_fits(ms.user_id, f"{where}.membership_state.user_id", errs) and org_fits):
                return None
            return op, m.State("membership", f"{ms.organization_id}|{ms.user_id}", status or m.ACTIVE)
        if kind == "resource_state":
            ref = u.resource_state.resource
            before = len(errs.violations)
            _ref(ref, f"{where}.resource_state.resource", errs)
            if ref.type:
                errs.require(
                    self.index.catalog.type(ref.type) is not None,
                    f"{where}.resource_state.resource.type",
                    f"unknown resource type {ref.type!r}",
                )
            if len(errs.violations) > before:
                return None
            return op, m.State("deleted", f"{ref.type}:{ref.id}", "1" if u.resource_state.deleted else "0")
        if kind == "resource_settings":
            ref = u.resource_settings.resource
            if ref.type != "organization" or not ref.id:
                errs.add(f"{where}.resource_settings.resource", "must be an organization (type and id)")
                return None
            if not _fits(ref.id, f"{where}.resource_settings.resource.id", errs):
                return None
            return op, m.State("require_mfa", ref.id, "1" if u.resource_settings.require_mfa else "0")
        errs.add(where, "needs an item")
        return None

    def _valid_tuple(self, t: m.Tuple, where: str, errs: ErrorCollector) -> bool:
        before = len(errs.violations)
        rtype = self.index.catalog.type(t.resource_type)
        errs.require(
            rtype is not None, f"{where}.resource.type", f"unknown resource type {t.resource_type!r}"
        )
        errs.require(bool(t.resource_id), f"{where}.resource.id", "is required")
        _fits(t.resource_id, f"{where}.resource.id", errs)
        _fits(t.subject_id, f"{where}.subject.id", errs)
        # Only a grant carries a capability: on a role or parent it would be part of the stored
        # row's key but not of the index's, so deleting the relationship would miss the row.
        errs.require(
            t.relation == "grant" or not t.capability,
            f"{where}.capability",
            "only a grant carries a capability",
        )
        errs.require(
            t.subject_type in m.SUBJECT_TYPES or t.relation == "parent",
            f"{where}.subject.type",
            "must be user, group, organization or service",
        )
        errs.require(bool(t.subject_id), f"{where}.subject.id", "is required")
        if rtype is not None:
            if t.relation == "grant":
                errs.require(
                    t.capability in rtype.capabilities,
                    f"{where}.capability",
                    f"unknown capability {t.capability!r} for {t.resource_type}",
                )
            elif t.relation == "parent":
                errs.require(
                    t.subject_type in rtype.parents,
                    f"{where}.subject.type",
                    f"{t.resource_type} cannot have a {t.subject_type} parent",
                )
            else:
                errs.require(
                    t.relation in rtype.adds,
                    f"{where}.relation",
                    f"{t.relation!r} is not a role of {t.resource_type}",
                )
                # its members inherit an organization's grants; a role bound to it would be ignored
                errs.require(
                    t.subject_type != "organization",
                    f"{where}.subject.type",
                    "an organization holds grants, not roles (relation grant, or GrantCapability)",
                )
        return len(errs.violations) == before

    async def WriteRelationships(self, request, context):
        require_service_account()
        errs = ErrorCollector()
        updates = [u for i, raw in enumerate(request.updates) if (u := self._update(i, raw, errs))]
        errs.require(bool(request.updates), "updates", "at least one update is required")
        preconditions = []
        for i, p in enumerate(request.preconditions):
            if p.operation == relationship_pb2.Precondition.OPERATION_UNSPECIFIED:
                errs.add(f"preconditions[{i}].operation", "must be MUST_EXIST or MUST_NOT_EXIST")
            f = p.filter
            if f.within_organization_id:
                errs.add(
                    f"preconditions[{i}].filter.within_organization_id", "is not supported in preconditions"
                )
            preconditions.append(
                (
                    p.operation == relationship_pb2.Precondition.OPERATION_MUST_EXIST,
                    _filter(f, f"preconditions[{i}].filter", errs),
                )
            )
        errs.raise_if_any()
        revision = await self.store.write(
            updates,
            preconditions=preconditions,
            request_id=self._request_key("WriteRelationships", request.request_id),
            after_write=self._audit("authz.relationships.write", [item for _, item in updates]),
        )
        await self.follower.catch_up()
        return pb.WriteRelationshipsResponse(revision=revision)

    async def ReadRelationships(self, request, context):
        self._require_service_or_platform_admin()
        errs = ErrorCollector()
        _filter(request.filter, "filter", errs)
        errs.raise_if_any()
        await self._consistent(request.consistency, context)
        size = page_size(request.page_size, default=100)
        matching = sorted(self._matching(request.filter))
        position = decode_token(request.page_token)
        after = tuple(position["after"]) if position else None
        rows = [t for t in matching if after is None or _key(t) > after][: size + 1]
        more = len(rows) > size
        rows = rows[:size]
        return pb.ReadRelationshipsResponse(
            relationships=[_tuple_pb(t) for t in rows],
            next_page_token=encode_token({"after": list(_key(rows[-1]))}) if more else "",
            revision=self.index.revision,
        )

    def _matching(self, f) -> list[m.Tuple]:
        match = self._matcher(f)
        return [t for t in self.index.tuples() if match(t)]

    def _matcher(self, f):
        """Whether a relationship matches filter ``f`` (validated by the caller)."""
        flt = _filter(f, "filter", ErrorCollector())
        org, organization_of = f.within_organization_id, self.index.organization_of
        return lambda t: flt.matches(t) and (not org or organization_of(t.resource) == org)

    async def DeleteRelationships(self, request, context):
        require_service_account()
        f = request.filter
        if not any(
            (
                f.resource_type,
                f.resource_id,
                f.relation,
                f.subject_type,
                f.subject_id,
                f.within_organization_id,
            )
        ):
            raise errors.InvalidArgument.field("filter", "at least one field must be set")
        errs = ErrorCollector()
        _filter(f, "filter", errs)
        errs.raise_if_any()

        deleted: list[m.Tuple] = []
        selected = []  # set when this call selected its deletes (not when it is a retry)
        await self.follower.catch_up()  # before the revision lock: the index is then close to the head

        async def select_deletes(session):
            # The revision lock is held, so nothing commits from here on. Revisions committed since
            # the catch-up above are read through this transaction's own connection and laid over
            # the index's matches: catching the index up here would need the follower's lock and a
            # second pooled connection while every other write waits on this lock (with a busy
            # replica that stalled every write until the pool's 30 s timeout, twice).
            base, match = self.index.revision, self._matcher(f)
            found = dict.fromkeys(t for t in self.index.tuples() if match(t))  # in the index's order
            try:
                gap = await self.store.changes_in(session, base)
            except ChangeLogCompacted:  # pruned within the last moments: only a retry can tell
                raise errors.Aborted(
                    "the change log moved on while deleting; retry", reason="RETRY"
                ) from None
            selected.append(True)
            for _, changes in gap:
                for c in changes:
                    if isinstance(c.item, m.Tuple) and match(c.item):
                        if c.op == "put":
                            found[c.item] = None
                        else:
                            found.pop(c.item, None)
            deleted.extend(found)
            return deleted

        async def after_write(session, revision):
            await self._audit("authz.relationships.delete", deleted)(session, revision)

        revision = await self.store.write(
            [],
            request_id=self._request_key("DeleteRelationships", request.request_id),
            select_deletes=select_deletes,
            after_write=after_write,
        )
        await self.follower.catch_up()
        count = len(deleted) if selected else await self._deleted_at(revision)
        return pb.DeleteRelationshipsResponse(revision=revision, deleted_count=count)

    async def _deleted_at(self, revision: int) -> int:
        """How many relationships the write of ``revision`` deleted (a retried DeleteRelationships
        answers with its first call's count), from the change log; 0 once that entry is pruned."""
        try:
            entries = await self.store.changes_since(revision - 1, limit=1)
        except ChangeLogCompacted:
            return 0
        return sum(
            c.op == "delete" and isinstance(c.item, m.Tuple)
            for r, changes in entries
            if r == revision
            for c in changes
        )

    # ---- grants -----------------------------------------------------------
    def _may_share(self, resource: m.Ref, capability: str = "") -> None:
        """Users need ``share`` on the object or ``org:manage_grants`` on its organization (on an
        organization itself: ``org:manage_grants``), and may grant only what they hold themselves.
        Service accounts may manage any grant."""
        principal = require_principal()
        if principal.is_service:
            return
        user, amr = ("user", principal.id), principal.amr
        org = self.index.organization_of(resource)
        may = resource[0] != "organization" and self.index.check(user, resource, "share", amr).allowed
        if not may and org:
            may = self.index.check(user, ("organization", org), "org:manage_grants", amr).allowed
        if may and capability and not self.index.check(user, resource, capability, amr).allowed:
            raise errors.PermissionDenied(
                f"you cannot grant {capability!r}: you do not hold it on {resource[0]}:{resource[1]}",
                capability=capability,
                resource=f"{resource[0]}:{resource[1]}",
            )
        if may:
            return
        # Existence of another tenant's object is not revealed: someone with no access to it who is
        # not an active member of its organization gets NOT_FOUND, as for an id that does not exist.
        member = org is not None and self.index.membership.get((org, principal.id)) == m.ACTIVE
        if not member and not self.index.access(user, resource, amr).capabilities:
            raise errors.NotFound(resource[0], resource[1])
        needed = "org:manage_grants" if resource[0] == "organization" else "share"
        raise errors.PermissionDenied(capability=needed, resource=f"{resource[0]}:{resource[1]}")

    def _grant_tuple(self, request) -> m.Tuple:
        errs = ErrorCollector()
        resource = _ref(request.resource, "resource", errs)
        subject = _ref(request.subject, "subject", errs)
        errs.require(
            subject[0] in ("user", "group", "organization"),
            "subject.type",
            "must be user, group or organization",
        )
        errs.require(bool(request.capability), "capability", "is required")
        errs.raise_if_any()
        self._evaluate(self.index.validate, resource[0], request.capability)
        shareable = (
            resource[0] == "organization" or "share" in self.index.catalog.types[resource[0]].capabilities
        )
        if not shareable:
            raise errors.InvalidArgument.field("resource.type", f"{resource[0]} objects cannot be shared")
        return m.Tuple(resource[0], resource[1], "grant", subject[0], subject[1], request.capability)

    def _check_grantee(self, t: m.Tuple) -> None:
        """An organization or group is granted only objects of its own organization. Asked after
        the caller may share the object: before, it would tell anyone which organization owns an
        id of another tenant (NOT_FOUND is the answer for those, as for an id that does not exist)."""
        resource, subject = t.resource, (t.subject_type, t.subject_id)
        org = self.index.organization_of(resource)
        if subject[0] == "organization" and org and subject[1] != org:
            raise errors.InvalidArgument.field(
                "subject.id", "an organization can be granted only objects of its own organization"
            )
        if subject[0] == "group" and org:
            group_org = self.index.organization_of(subject)
            if group_org and group_org != org:
                raise errors.InvalidArgument.field(
                    "subject.id", "a group can be granted only objects of its own organization"
                )

    async def _write_grant(self, method: str, op: str, request) -> int:
        t = self._grant_tuple(request)
        self._may_share(t.resource, t.capability)
        self._check_grantee(t)
        action = "authz.grant" if op == "touch" else "authz.revoke"
        revision = await self.store.write(
            [(op, t)],
            request_id=self._request_key(method, request.request_id),
            after_write=self._audit(action, [t], target=t.resource),
        )
        await self.follower.catch_up()
        return revision

    async def GrantCapability(self, request, context):
        return pb.GrantCapabilityResponse(
            revision=await self._write_grant("GrantCapability", "touch", request)
        )

    async def RevokeCapability(self, request, context):
        return pb.RevokeCapabilityResponse(
            revision=await self._write_grant("RevokeCapability", "delete", request)
        )

    async def ListGrants(self, request, context):
        errs = ErrorCollector()
        resource = _ref(request.resource, "resource", errs)
        errs.raise_if_any()
        self._evaluate(self.index.validate, resource[0])
        self._may_share(resource)
        grants = sorted(
            m.Tuple(resource[0], resource[1], "grant", s[0], s[1], cap)
            for s, caps in self.index.grants.get(resource, {}).items()
            for cap in caps
        )
        size = page_size(request.page_size, default=100)
        position = decode_token(request.page_token)
        after = tuple(position["after"]) if position else None
        rows = [t for t in grants if after is None or _key(t) > after][: size + 1]
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListGrantsResponse(
            grants=[_tuple_pb(t) for t in rows],
            next_page_token=encode_token({"after": list(_key(rows[-1]))}) if more else "",
        )

    # ---- catalog and watch -----------------------------------------------
    async def GetCatalog(self, request, context):
        require_principal()
        out = catalog_pb2.Catalog()
        for t in self.index.catalog.types.values():
            out.resource_types.append(
                catalog_pb2.ResourceType(
                    name=t.name,
                    parent_types=list(t.parents),
                    roles=[
                        catalog_pb2.Role(name=r, adds=list(t.adds[r]), capabilities=sorted(t.role_caps[r]))
                        for r in t.roles
                    ],
                    capabilities=sorted(t.capabilities),
                    parent_implications=[
                        catalog_pb2.ParentImplication(parent_type=p, parent_role=pr, role=r)
                        for pr, r in t.implied.items()
                        for p in t.parents
                        if pr in self.index.catalog.types[p].adds
                    ],
                )
            )
        return pb.GetCatalogResponse(catalog=out)

    async def Watch(self, request, context):
        require_service_account()
        since = request.since_revision
        if since < 0:
            raise errors.InvalidArgument.field("since_revision", "must be 0 or more")
        types = set(request.resource_types)
        while True:
            try:
                batch = await shielded(self.store.changes_since(since, limit=500))
            except ChangeLogCompacted as gone:
                raise errors.FailedPrecondition(
                    f"revisions after {since} are no longer in the change log (it starts at "
                    f"{gone.oldest}); re-read with ReadRelationships and watch from its revision",
                    reason="REVISION_COMPACTED",
                    metadata={"since_revision": str(since), "oldest_revision": str(gone.oldest)},
                ) from None
            if not batch:
                # Woken by the follower when a newer revision is applied (no polling per watcher).
                await self.follower.wait_beyond(since, timeout=WATCH_IDLE)
                continue
            response = pb.WatchResponse()
            for revision, changes in batch:
                for c in changes:
                    if types and (about := _watched_type(c.item)) is not None and about not in types:
                        continue
                    response.changes.append(
                        relationship_pb2.RelationshipChange(update=_change_pb(c), revision=revision)
                    )
                since = revision
            response.revision = since
            yield response


def _watched_type(item: m.Tuple | m.State) -> str | None:
    """The resource type a change is about, for Watch's type filter; None for a subject's or a
    membership's state, which change decisions on every type and so are always sent."""
    if isinstance(item, m.Tuple):
        return item.resource_type
    if item.kind == "deleted":
        return item.key.partition(":")[0]
    if item.kind == "require_mfa":
        return "organization"
    return None


def _batch_consistency(request) -> decision_pb2.Consistency:
    """The batch's requirement; without one, the strictest of the items' (never a staler answer
    than an item asked for): fully consistent if any item is, else the highest revision asked."""
    if request.HasField("consistency"):
        return request.consistency
    kinds = [item.consistency.WhichOneof("requirement") for item in request.items]
    if "fully_consistent" in kinds:
        return decision_pb2.Consistency(fully_consistent=True)
    revisions = [
        item.consistency.at_least_revision for item, k in zip(request.items, kinds, strict=True) if k
    ]
    if revisions and max(revisions) > 0:
        return decision_pb2.Consistency(at_least_revision=max(revisions))
    return decision_pb2.Consistency()


def _key(t: m.Tuple) -> tuple:
    return (t.resource_type, t.resource_id, t.relation, t.subject_type, t.subject_id, t.capability)


def _tuple_pb(t: m.Tuple) -> relationship_pb2.Relationship:
    return relationship_pb2.Relationship(
        resource=refs_pb2.ResourceRef(type=t.resource_type, id=t.resource_id),
        relation=t.relation,
        subject=refs_pb2.SubjectRef(type=t.subject_type, id=t.subject_id),
        capability=t.capability,
    )


def _change_pb(c: m.Change) -> relationship_pb2.RelationshipUpdate:
    op = Op.OPERATION_TOUCH if c.op == "put" else Op.OPERATION_DELETE
    if isinstance(c.item, m.Tuple):
        return relationship_pb2.RelationshipUpdate(operation=op, relationship=_tuple_pb(c.item))
    s = c.item
    if s.kind == "disabled":
        stype, _, sid = s.key.partition(":")
        return relationship_pb2.RelationshipUpdate(
            operation=op,
            subject_state=relationship_pb2.SubjectState(
                subject=refs_pb2.SubjectRef(type=stype, id=sid), disabled=s.value == "1"
            ),
        )
    if s.kind == "membership":
        org, user = s.key.split("|", 1)
        status = {v: k for k, v in STATUS.items()}[s.value]
        return relationship_pb2.RelationshipUpdate(
            operation=op,
            membership_state=relationship_pb2.MembershipState(
                organization_id=org, user_id=user, status=status
            ),
        )
    if s.kind == "deleted":
        rtype, _, rid = s.key.partition(":")
        return relationship_pb2.RelationshipUpdate(
            operation=op,
            resource_state=relationship_pb2.ResourceState(
                resource=refs_pb2.ResourceRef(type=rtype, id=rid), deleted=s.value == "1"
            ),
        )
    return relationship_pb2.RelationshipUpdate(
        operation=op,
        resource_settings=relationship_pb2.ResourceSettings(
            resource=refs_pb2.ResourceRef(type="organization", id=s.key), require_mfa=s.value == "1"
        ),
    )
