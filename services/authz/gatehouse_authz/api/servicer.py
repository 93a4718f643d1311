"""AuthzService over gRPC: validate, apply the caller rules, call the index or store, convert."""

from __future__ import annotations

from gatehouse.authz.v1 import authz_service_pb2 as pb
from gatehouse.authz.v1 import authz_service_pb2_grpc, catalog_pb2, decision_pb2, relationship_pb2
from gatehouse.kit import errors
from gatehouse.kit.errors import ErrorCollector
from gatehouse.kit.interceptors import require_principal, require_service_account
from gatehouse.kit.pagination import decode_token, encode_token, page_after, page_size
from gatehouse.type.v1 import refs_pb2
from gatehouse_authz.adapters.follower import Follower
from gatehouse_authz.adapters.store import Filter, Store
from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.index import Index, UnknownCapability, UnknownType

Op = relationship_pb2.RelationshipUpdate.Operation
STATUS = {
    relationship_pb2.MEMBERSHIP_STATUS_INVITED: m.INVITED,
    relationship_pb2.MEMBERSHIP_STATUS_ACTIVE: m.ACTIVE,
    relationship_pb2.MEMBERSHIP_STATUS_INACTIVE: m.INACTIVE,
}
MAX_BATCH = 1000
DEFAULT_WAIT = 5.0


def _ref(msg, field: str, errs: ErrorCollector) -> m.Ref:
    errs.require(bool(msg.type), f"{field}.type", "is required")
    errs.require(bool(msg.id), f"{field}.id", "is required")
    return (msg.type, msg.id)


def _reason(name: str) -> int:
    return decision_pb2.DecisionReason.Value(f"DECISION_REASON_{name}")


class AuthzServicer(authz_service_pb2_grpc.AuthzServiceServicer):
    def __init__(self, index: Index, store: Store, follower: Follower):
        self.index = index
        self.store = store
        self.follower = follower

    # ---- shared steps -----------------------------------------------------
    def _authorize_subject(self, subject: m.Ref) -> None:
        """Service accounts may ask about anyone, users about themselves, platform admins about anyone."""
        principal = require_principal()
        if principal.is_service or subject == ("user", principal.id):
            return
        if self.index.is_platform_admin(("user", principal.id)):
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
            await self.follower.wait_for(
                consistency.at_least_revision, remaining if remaining else DEFAULT_WAIT
            )
        elif which == "fully_consistent":
            await self.follower.catch_up()

    def _evaluate(self, fn, *args):
        try:
            return fn(*args)
        except UnknownType as exc:
            raise errors.InvalidArgument.field("resource.type", f"unknown resource type {exc}") from None
        except UnknownCapability as exc:
            raise errors.InvalidArgument.field(
                "capability", f"unknown capability {exc} for this resource type"
            ) from None

    def _check(self, item: pb.CheckCapabilityRequest, field: str = "") -> pb.CheckCapabilityResponse:
        errs = ErrorCollector()
        subject = _ref(item.subject, f"{field}subject", errs)
        resource = _ref(item.resource, f"{field}resource", errs)
        errs.require(bool(item.capability), f"{field}capability", "is required")
        errs.raise_if_any()
        self._authorize_subject(subject)
        decision = self._evaluate(
            self.index.check, subject, resource, item.capability, tuple(item.authentication_context.amr)
        )
        answer = pb.CheckCapabilityResponse(
            allowed=decision.allowed, reason=_reason(decision.reason), revision=self.index.revision
        )
        if item.explain:
            answer.explanation.steps.extend(
                decision_pb2.ExplanationStep(description=s, reason=_reason(decision.reason))
                for s in decision.steps
            )
        return answer

    # ---- checks -----------------------------------------------------------
    async def CheckCapability(self, request, context):
        await self._consistent(request.consistency, context)
        return self._check(request)

    async def CheckCapabilities(self, request, context):
        if len(request.items) > MAX_BATCH:
            raise errors.InvalidArgument.field("items", f"at most {MAX_BATCH} checks per call")
        await self._consistent(request.consistency, context)
        results = [self._check(item, f"items[{i}].") for i, item in enumerate(request.items)]
        return pb.CheckCapabilitiesResponse(results=results, revision=self.index.revision)

    async def GetAccess(self, request, context):
        errs = ErrorCollector()
        subject, resource = _ref(request.subject, "subject", errs), _ref(request.resource, "resource", errs)
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
        subject = _ref(request.subject, "subject", errs)
        errs.require(bool(request.resource_type), "resource_type", "is required")
        errs.require(bool(request.capability), "capability", "is required")
        errs.raise_if_any()
        self._authorize_subject(subject)
        size = page_size(request.page_size, default=100)
        await self._consistent(request.consistency, context)
        parent = (request.parent.type, request.parent.id) if request.parent.id else None
        try:
            ids = self.index.lookup_resources(
                subject,
                request.resource_type,
                request.capability,
                parent,
                tuple(request.authentication_context.amr),
            )
        except UnknownType as exc:
            raise errors.InvalidArgument.field("resource_type", f"unknown resource type {exc}") from None
        except UnknownCapability as exc:
            raise errors.InvalidArgument.field("capability", f"unknown capability {exc}") from None
        page, token = page_after(ids, request.page_token, size)
        return pb.LookupResourcesResponse(
            resource_ids=page, next_page_token=token, revision=self.index.revision
        )

    async def LookupSubjects(self, request, context):
        principal = require_principal()
        if not principal.is_service and not self.index.is_platform_admin(("user", principal.id)):
            raise errors.PermissionDenied(
                "service accounts and platform admins only", reason="CAPABILITY_DENIED"
            )
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
            return op, m.State(
                "disabled",
                f"{u.subject_state.subject.type}:{u.subject_state.subject.id}",
                "1" if u.subject_state.disabled else "0",
            )
        if kind == "membership_state":
            ms = u.membership_state
            status = STATUS.get(ms.status)
            if not ms.organization_id or not ms.user_id or (status is None and op != "delete"):
                errs.add(f"{where}.membership_state", "needs organization_id, user_id and a status")
                return None
            return op, m.State("membership", f"{ms.organization_id}|{ms.user_id}", status or m.ACTIVE)
        if kind == "resource_state":
            rs = u.resource_state
            return op, m.State("deleted", f"{rs.resource.type}:{rs.resource.id}", "1" if rs.deleted else "0")
        if kind == "resource_settings":
            rs = u.resource_settings
            return op, m.State("require_mfa", rs.resource.id, "1" if rs.require_mfa else "0")
        errs.add(where, "needs an item")
        return None

    def _valid_tuple(self, t: m.Tuple, where: str, errs: ErrorCollector) -> bool:
        before = len(errs.violations)
        rtype = self.index.catalog.type(t.resource_type)
        errs.require(
            rtype is not None, f"{where}.resource.type", f"unknown resource type {t.resource_type!r}"
        )
        errs.require(bool(t.resource_id), f"{where}.resource.id", "is required")
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
            preconditions.append(
                (
                    p.operation == relationship_pb2.Precondition.OPERATION_MUST_EXIST,
                    Filter(f.resource_type, f.resource_id, f.relation, f.subject_type, f.subject_id),
                )
            )
        errs.raise_if_any()
        revision = await self.store.write(updates, preconditions=preconditions, request_id=request.request_id)
        await self.follower.catch_up()
        return pb.WriteRelationshipsResponse(revision=revision)

    async def ReadRelationships(self, request, context):
        principal = require_principal()
        if not principal.is_service and not self.index.is_platform_admin(("user", principal.id)):
            raise errors.PermissionDenied(
                "service accounts and platform admins only", reason="CAPABILITY_DENIED"
            )
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
        flt = Filter(f.resource_type, f.resource_id, f.relation, f.subject_type, f.subject_id)
        org = f.within_organization_id
        out = []
        for t in self.index.tuples():
            if not flt.matches(t):
                continue
            if org and self.index.organization_of(t.resource) != org:
                continue
            out.append(t)
        return out

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

        deleted: list[m.Tuple] = []

        async def select_deletes(_session):
            await self.follower.catch_up()
            deleted.extend(self._matching(f))
            return deleted

        revision = await self.store.write([], request_id=request.request_id, select_deletes=select_deletes)
        await self.follower.catch_up()
        return pb.DeleteRelationshipsResponse(revision=revision, deleted_count=len(deleted))

    # ---- grants -----------------------------------------------------------
    def _may_share(self, resource: m.Ref) -> None:
        principal = require_principal()
        if principal.is_service:
            return
        user = ("user", principal.id)
        if self._evaluate(self.index.check, user, resource, "share", principal.amr).allowed:
            return
        org = self.index.organization_of(resource)
        if org and self.index.check(user, ("organization", org), "org:manage_grants", principal.amr).allowed:
            return
        # Existence of another tenant's object is not revealed.
        if not self.index.access(user, resource, principal.amr).capabilities:
            raise errors.NotFound(resource[0], resource[1])
        raise errors.PermissionDenied(capability="share", resource=f"{resource[0]}:{resource[1]}")

    def _grant_tuple(self, request) -> m.Tuple:
        errs = ErrorCollector()
        resource = _ref(request.resource, "resource", errs)
        subject = _ref(request.subject, "subject", errs)
        errs.require(
            subject[0] in ("user", "group", "organization"),
            "subject.type",
            "must be user, group or organization",
        )
        errs.raise_if_any()
        self._evaluate(self.index.validate, resource[0], request.capability)
        if "share" not in self.index.catalog.types[resource[0]].capabilities:
            raise errors.InvalidArgument.field("resource.type", f"{resource[0]} objects cannot be shared")
        return m.Tuple(resource[0], resource[1], "grant", subject[0], subject[1], request.capability)

    async def GrantCapability(self, request, context):
        t = self._grant_tuple(request)
        self._may_share(t.resource)
        revision = await self.store.write([("touch", t)], request_id=request.request_id)
        await self.follower.catch_up()
        return pb.GrantCapabilityResponse(revision=revision)

    async def RevokeCapability(self, request, context):
        t = self._grant_tuple(request)
        self._may_share(t.resource)
        revision = await self.store.write([("delete", t)], request_id=request.request_id)
        await self.follower.catch_up()
        return pb.RevokeCapabilityResponse(revision=revision)

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
        import asyncio

        since = request.since_revision
        types = set(request.resource_types)
        while True:
            batch = await self.store.changes_since(since, limit=500)
            if not batch:
                await asyncio.sleep(self.follower.poll_interval)
                continue
            response = pb.WatchResponse()
            for revision, changes in batch:
                for c in changes:
                    if types and (not isinstance(c.item, m.Tuple) or c.item.resource_type not in types):
                        continue
                    response.changes.append(
                        relationship_pb2.RelationshipChange(update=_change_pb(c), revision=revision)
                    )
                since = revision
            response.revision = since
            yield response


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
