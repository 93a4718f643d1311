"""``AuthzClient``: checks with a per-revision decision cache, consistency tokens, failing closed.

Guarantees (also in docs/client.md):

- **Fail closed.** Any error, timeout or unreachable authz raises
  :class:`AuthzUnavailable` (a ``gatehouse.kit.errors.Unavailable``, so a
  Gatehouse server maps it to ``UNAVAILABLE``). No code path turns an error into
  an allow, and errors are never cached.
- **Read your writes.** Every write through this client (``write``, ``delete``,
  ``grant``, ``revoke``) raises the client's *revision floor* to the revision
  authz returned; :meth:`AuthzClient.observe_revision` does the same for a
  revision obtained elsewhere (e.g. from tenancy). Every later check asks authz
  for ``at_least_revision = floor`` and never answers from a cache entry
  computed below the floor.
- **Cache.** Decisions are cached under (subject, resource, capability,
  authentication methods, revision floor) for ``cache_ttl`` seconds (default
  1 s). A change made by *another* process is therefore seen after at most
  ``cache_ttl`` — or at once after the process observes its revision, or as soon
  as :meth:`AuthzClient.follow_changes` (authz ``Watch``) delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from gatehouse.kit import errors
from gatehouse.kit.aio import wait_event
from gatehouse.kit.authz_guard import Decision, split_ref
from gatehouse.kit.context import Principal
from gatehouse.kit.status import error_info

log = logging.getLogger("gatehouse.client.authz")

TokenSource = Callable[[], Awaitable[str | None]]
Subject = Principal | str | tuple[str, str]
Resource = str | tuple[str, str]
MAX_BATCH = 1000


class AuthzUnavailable(errors.Unavailable):
    """Authz could not answer (down, slow, or refused the call): the check is denied."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message, dependency="authz", metadata={"authz_code": code} if code else None)
        self.authz_code = code


@dataclass(frozen=True)
class Access:
    """Everything a subject may do on a resource (``GetAccess``)."""

    member_role: str
    effective_role: str
    is_platform_admin: bool
    capabilities: frozenset[str]
    revision: int


class DecisionCache:
    """A bounded LRU of decisions that expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Decision]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[0]:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, decision: Decision) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _subject(subject: Subject) -> tuple[tuple[str, str], tuple[str, ...], str]:
    """(subject ref, amr, session id) of a Principal, ``"type:id"`` or a tuple."""
    if isinstance(subject, Principal):
        return (subject.kind, subject.id), tuple(subject.amr), subject.session_id or ""
    return split_ref(subject), (), ""


def _reason_name(value: int) -> str:
    from gatehouse.authz.v1 import decision_pb2

    return decision_pb2.DecisionReason.Name(value).removeprefix("DECISION_REASON_")


class AuthzClient:
    """Client of ``gatehouse.authz.v1.AuthzService`` for applications and backends."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token_source: TokenSource | None = None,
        timeout: float = 0.5,
        write_timeout: float = 5.0,
        cache_ttl: float = 1.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc

        self._pb = authz_service_pb2
        self.stub = authz_service_pb2_grpc.AuthzServiceStub(channel)
        self._token_source = token_source
        self.timeout = timeout  # checks and reads: the hot path, fail fast
        self.write_timeout = write_timeout  # relationship writes commit to authz's database
        self.cache = DecisionCache(cache_ttl, cache_size, clock)
        self._floor = 0
        self._floor_changed = asyncio.Event()
        self._following = False  # follow_changes() is running
        self._coherent = False  # ... and its Watch stream is live

    @property
    def coherent(self) -> bool:
        """Whether a live Watch stream keeps the cache current (see :meth:`follow_changes`)."""
        return self._following and self._coherent

    def _cache_usable(self) -> bool:
        # While following, cached answers are used only as long as the stream is live:
        # if authz (or the stream) goes away, every check goes to authz, and fails closed.
        return not self._following or self._coherent

    # ---- consistency --------------------------------------------------------
    @property
    def revision_floor(self) -> int:
        """The lowest revision later answers may be computed at."""
        return self._floor

    def observe_revision(self, revision: int) -> None:
        """A write happened at ``revision``: later checks must see it (older cache entries are bypassed)."""
        if revision > self._floor:
            self._floor = revision
            self._floor_changed.set()

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait (bounded) until the floor reached ``revision`` (e.g. through :meth:`follow_changes`)."""
        deadline = time.monotonic() + timeout
        while self._floor < revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._floor_changed.clear()
            await wait_event(self._floor_changed, remaining)
        return True

    def _required(self, at_least_revision: int | None) -> int:
        return max(self._floor, at_least_revision or 0)

    def _consistency(self, required: int):
        from gatehouse.authz.v1 import decision_pb2

        if required > 0:
            return decision_pb2.Consistency(at_least_revision=required)
        return decision_pb2.Consistency(minimize_latency=True)

    # ---- calls --------------------------------------------------------------
    async def _metadata(self) -> Sequence[tuple[str, str]]:
        if self._token_source is None:
            return ()
        token = await self._token_source()
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _call(self, method: str, request, *, timeout: float | None = None):
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout if timeout is None else timeout, metadata=await self._metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise AuthzUnavailable(
                f"authorization service did not answer {method} ({exc.code().name}: {exc.details()}); denied",
                exc.code().name,
            ) from exc
        except TimeoutError as exc:
            raise AuthzUnavailable(f"authorization service timed out on {method}; denied") from exc
        except errors.GatehouseError as exc:  # e.g. the token source could not get a token
            raise AuthzUnavailable(f"no credentials to ask authz: {exc.message}; denied") from exc

    def _check_request(self, subject: Subject, resource: Resource, capability: str):
        from gatehouse.authz.v1 import decision_pb2
        from gatehouse.type.v1 import refs_pb2

        (s_type, s_id), amr, session_id = _subject(subject)
        r_type, r_id = split_ref(resource)
        return self._pb.CheckCapabilityRequest(
            subject=refs_pb2.SubjectRef(type=s_type, id=s_id),
            resource=refs_pb2.ResourceRef(type=r_type, id=r_id),
            capability=capability,
            authentication_context=decision_pb2.AuthenticationContext(amr=list(amr), session_id=session_id),
        )

    @staticmethod
    def _key(subject: Subject, resource: Resource, capability: str, required: int) -> tuple:
        ref, amr, _ = _subject(subject)
        return (ref, split_ref(resource), capability, tuple(sorted(amr)), required)

    async def check(
        self,
        subject: Subject,
        resource: Resource,
        capability: str,
        *,
        at_least_revision: int | None = None,
        use_cache: bool = True,
    ) -> Decision:
        """Whether ``subject`` holds ``capability`` on ``resource``; raises AuthzUnavailable if unsure."""
        required = self._required(at_least_revision)
        key = self._key(subject, resource, capability, required)
        if use_cache and self._cache_usable():
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        request = self._check_request(subject, resource, capability)
        request.consistency.CopyFrom(self._consistency(required))
        answer = await self._call("CheckCapability", request)
        decision = Decision(answer.allowed, _reason_name(answer.reason), answer.revision)
        self.cache.put(key, decision)
        return decision

    async def check_many(
        self,
        items: Iterable[tuple[Subject, Resource, str]],
        *,
        at_least_revision: int | None = None,
        use_cache: bool = True,
    ) -> list[Decision]:
        """Several checks in one ``CheckCapabilities`` call (cached ones are not asked again); in order."""
        items = list(items)
        required = self._required(at_least_revision)
        keys = [self._key(s, r, c, required) for s, r, c in items]
        usable = use_cache and self._cache_usable()
        results: list[Decision | None] = [self.cache.get(k) if usable else None for k in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        for start in range(0, len(missing), MAX_BATCH):
            chunk = missing[start : start + MAX_BATCH]
            request = self._pb.CheckCapabilitiesRequest(
                items=[self._check_request(*items[i]) for i in chunk], consistency=self._consistency(required)
            )
            answer = await self._call("CheckCapabilities", request)
            if len(answer.results) != len(chunk):
                raise AuthzUnavailable("authorization service answered a batch incompletely; denied")
            for i, result in zip(chunk, answer.results, strict=True):
                decision = Decision(result.allowed, _reason_name(result.reason), result.revision)
                self.cache.put(keys[i], decision)
                results[i] = decision
        return results  # type: ignore[return-value]

    async def require(self, subject: Subject, resource: Resource, capability: str, **kwargs) -> Decision:
        """The decision if allowed; ``PermissionDenied`` if not; ``AuthzUnavailable`` if unsure."""
        decision = await self.check(subject, resource, capability, **kwargs)
        if not decision.allowed:
            r_type, r_id = split_ref(resource)
            raise errors.PermissionDenied(
                f"missing capability {capability!r} on {r_type}:{r_id}",
                capability=capability,
                resource=f"{r_type}:{r_id}",
                reason="MFA_REQUIRED" if decision.reason == "MFA_REQUIRED" else "CAPABILITY_DENIED",
                metadata={"decision_reason": decision.reason},
            )
        return decision

    async def access(
        self, subject: Subject, resource: Resource, *, at_least_revision: int | None = None
    ) -> Access:
        """Every capability ``subject`` holds on ``resource`` (``GetAccess``; not cached)."""
        from gatehouse.authz.v1 import decision_pb2
        from gatehouse.type.v1 import refs_pb2

        (s_type, s_id), amr, session_id = _subject(subject)
        r_type, r_id = split_ref(resource)
        answer = await self._call(
            "GetAccess",
            self._pb.GetAccessRequest(
                subject=refs_pb2.SubjectRef(type=s_type, id=s_id),
                resource=refs_pb2.ResourceRef(type=r_type, id=r_id),
                consistency=self._consistency(self._required(at_least_revision)),
                authentication_context=decision_pb2.AuthenticationContext(
                    amr=list(amr), session_id=session_id
                ),
            ),
        )
        return Access(
            answer.member_role,
            answer.effective_role,
            answer.is_platform_admin,
            frozenset(answer.capabilities),
            answer.revision,
        )

    async def lookup(
        self,
        subject: Subject,
        resource_type: str,
        capability: str,
        *,
        parent: Resource | None = None,
        at_least_revision: int | None = None,
        page_size: int = 1000,
        max_pages: int = 100,
    ) -> list[str]:
        """Ids of every ``resource_type`` on which ``subject`` holds ``capability`` (all pages, in order).

        More than ``max_pages`` pages raise AuthzUnavailable rather than return a silently truncated list.
        """
        from gatehouse.authz.v1 import decision_pb2
        from gatehouse.type.v1 import refs_pb2

        (s_type, s_id), amr, session_id = _subject(subject)
        request = self._pb.LookupResourcesRequest(
            subject=refs_pb2.SubjectRef(type=s_type, id=s_id),
            resource_type=resource_type,
            capability=capability,
            consistency=self._consistency(self._required(at_least_revision)),
            page_size=page_size,
            authentication_context=decision_pb2.AuthenticationContext(amr=list(amr), session_id=session_id),
        )
        if parent is not None:
            p_type, p_id = split_ref(parent)
            request.parent.type, request.parent.id = p_type, p_id
        ids: list[str] = []
        for _ in range(max_pages):
            answer = await self._call("LookupResources", request)
            ids.extend(answer.resource_ids)
            if not answer.next_page_token:
                return ids
            request.page_token = answer.next_page_token
        raise AuthzUnavailable(f"more than {max_pages} pages of {resource_type}; refusing a truncated list")

    async def parent_of(self, resource: Resource) -> tuple[str, str] | None:
        """The parent of ``resource`` (its ``parent`` relationship), or None. Service accounts only."""
        from gatehouse.authz.v1 import relationship_pb2

        r_type, r_id = split_ref(resource)
        answer = await self._call(
            "ReadRelationships",
            self._pb.ReadRelationshipsRequest(
                filter=relationship_pb2.RelationshipFilter(
                    resource_type=r_type, resource_id=r_id, relation="parent"
                ),
                consistency=self._consistency(self._floor),
                page_size=1,
            ),
        )
        if not answer.relationships:
            return None
        subject = answer.relationships[0].subject
        return subject.type, subject.id

    async def organization_of(self, resource: Resource, *, max_depth: int = 8) -> str | None:
        """The organization ``resource`` belongs to (walking ``parent`` links), or None if unregistered."""
        ref = split_ref(resource)
        for _ in range(max_depth):
            if ref[0] == "organization":
                return ref[1]
            parent = await self.parent_of(ref)
            if parent is None:
                return None
            ref = parent
        return None

    # ---- writes (service accounts) -----------------------------------------
    async def write(self, updates: Sequence, *, preconditions: Sequence = (), request_id: str = "") -> int:
        """``WriteRelationships``; returns the revision and raises the floor to it."""
        answer = await self._call(
            "WriteRelationships",
            self._pb.WriteRelationshipsRequest(
                updates=list(updates), preconditions=list(preconditions), request_id=request_id
            ),
            timeout=self.write_timeout,
        )
        self.observe_revision(answer.revision)
        return answer.revision

    async def delete(self, relationship_filter, *, request_id: str = "") -> int:
        """``DeleteRelationships`` matching the filter; returns the revision and raises the floor."""
        answer = await self._call(
            "DeleteRelationships",
            self._pb.DeleteRelationshipsRequest(filter=relationship_filter, request_id=request_id),
            timeout=self.write_timeout,
        )
        self.observe_revision(answer.revision)
        return answer.revision

    async def grant(
        self, resource: Resource, capability: str, subject: Subject, *, request_id: str = ""
    ) -> int:
        """``GrantCapability`` (caller needs ``share``); returns the revision and raises the floor."""
        return await self._grant("GrantCapability", resource, capability, subject, request_id)

    async def revoke(
        self, resource: Resource, capability: str, subject: Subject, *, request_id: str = ""
    ) -> int:
        """``RevokeCapability``; returns the revision and raises the floor."""
        return await self._grant("RevokeCapability", resource, capability, subject, request_id)

    async def _grant(self, method, resource, capability, subject, request_id) -> int:
        from gatehouse.type.v1 import refs_pb2

        (s_type, s_id), _, _ = _subject(subject)
        r_type, r_id = split_ref(resource)
        request_cls = getattr(self._pb, f"{method}Request")
        answer = await self._call(
            method,
            request_cls(
                resource=refs_pb2.ResourceRef(type=r_type, id=r_id),
                capability=capability,
                subject=refs_pb2.SubjectRef(type=s_type, id=s_id),
                request_id=request_id,
            ),
            timeout=self.write_timeout,
        )
        self.observe_revision(answer.revision)
        return answer.revision

    # ---- cache coherence -----------------------------------------------------
    async def follow_changes(self, *, retry_delay: float = 1.0) -> None:
        """Follow authz's ``Watch`` stream and raise the floor on every change (runs until cancelled).

        With it, a change made anywhere bypasses the cache as soon as the stream
        delivers it instead of after ``cache_ttl``; and while the stream is down
        (authz unreachable) the cache is not used at all, so every check asks
        authz and fails closed. Needs a service-account token.
        """
        self._following = True
        try:
            while True:
                try:
                    since = self._floor or await self._head_revision()
                    # Start one revision back so the first message confirms the stream is live.
                    stream = self.stub.Watch(
                        self._pb.WatchRequest(since_revision=max(since - 1, 0)),
                        metadata=await self._metadata(),
                    )
                    async for message in stream:
                        self.observe_revision(message.revision)
                        self._coherent = True
                except (grpc.aio.AioRpcError, errors.GatehouseError) as exc:
                    log.warning("authz watch interrupted (%s); checks bypass the cache until it resumes", exc)
                    info = error_info(exc) if isinstance(exc, grpc.aio.AioRpcError) else None
                    if info is not None and info.reason == "REVISION_COMPACTED":
                        # What changed before the log's horizon is unknown: raise the floor to the
                        # head, so no answer cached before it is used again, and follow from there.
                        with contextlib.suppress(grpc.aio.AioRpcError, errors.GatehouseError):
                            self.observe_revision(await self._head_revision())
                finally:
                    self._coherent = False
                await asyncio.sleep(retry_delay)
        finally:
            self._following = False

    async def _head_revision(self) -> int:
        """The revision authz is at (a one-row ReadRelationships answers with it)."""
        probe = await self._call(
            "ReadRelationships",
            self._pb.ReadRelationshipsRequest(page_size=1, filter={"resource_type": "platform"}),
        )
        return probe.revision
