"""Use cases of the notes service: one transaction each, audit event included.

Access was already decided by the guard before any of these run; what is left
here is the data and its registration with authz:

- **create** registers ``note:<id>#parent@workspace:<ws>`` in authz *first*
  (idempotent by request id), then inserts the row. A crash in between leaves a
  parent link for a note that does not exist — harmless: reading it answers
  NOT_FOUND. The other order could leave a note nobody is allowed to read.
- **delete** marks the row deleted, then removes the note's relationships
  (its parent link and per-note grants). If authz is down at that moment the
  leftovers are again harmless (the note answers NOT_FOUND) and are logged.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError

from gatehouse.client import AuthzClient
from gatehouse.kit import audit_log, errors
from gatehouse.kit.context import Principal
from gatehouse.kit.db import Database
from gatehouse.kit.ids import new_id
from gatehouse.kit.pagination import decode_token, encode_token, page_size
from gatehouse_notes import store
from gatehouse_notes.domain import RESOURCE_TYPE, Note, now, validate_content

log = logging.getLogger("gatehouse_notes")
SERVICE = "notes"


class Notes:
    def __init__(self, db: Database, authz: AuthzClient):
        self.db = db
        self.authz = authz
        self._organizations: dict[str, str] = {}  # workspace id -> organization id (never changes)

    async def _organization_of(self, workspace_id: str) -> str:
        """The workspace's organization (from authz), so audit events land in that organization's trail."""
        org = self._organizations.get(workspace_id)
        if org is None:
            org = await self.authz.organization_of(("workspace", workspace_id)) or ""
            if len(self._organizations) > 10_000:
                self._organizations.clear()
            self._organizations[workspace_id] = org
        return org

    @staticmethod
    async def _audit(session, verb: str, note: Note, organization_id: str, details: dict | None = None):
        """The audit event of a change, in the change's own transaction (the kit's outbox)."""
        await audit_log.record(
            session,
            service=SERVICE,
            action=f"notes.note.{verb}",
            organization_id=organization_id,
            workspace_id=note.workspace_id,
            target=(RESOURCE_TYPE, note.id),
            details=details,
        )

    async def _register(self, note_id: str, workspace_id: str) -> int:
        from gatehouse.authz.v1 import relationship_pb2
        from gatehouse.type.v1 import refs_pb2

        parent = relationship_pb2.Relationship(
            resource=refs_pb2.ResourceRef(type=RESOURCE_TYPE, id=note_id),
            relation="parent",
            subject=refs_pb2.SubjectRef(type="workspace", id=workspace_id),
        )
        update = relationship_pb2.RelationshipUpdate(
            operation=relationship_pb2.RelationshipUpdate.OPERATION_TOUCH, relationship=parent
        )
        return await self.authz.write([update], request_id=f"notes:register:{note_id}")

    async def create(
        self, actor: Principal, workspace_id: str, title: str, body: str, request_id: str = ""
    ) -> tuple[Note, int]:
        validate_content(title, body, creating=True)
        key = f"{actor.id}:{request_id}" if request_id else None  # one user's key never finds another's note
        if key:
            async with self.db.unit_of_work() as uow:
                existing = await store.by_request_id(uow.session, key)
            if existing is not None and existing.workspace_id == workspace_id:
                return existing, self.authz.revision_floor
        when = now()
        note = Note(new_id(), workspace_id, title.strip(), body, actor.id, when, when, request_id=key)
        revision = await self._register(note.id, workspace_id)
        organization_id = await self._organization_of(workspace_id)
        try:
            async with self.db.unit_of_work() as uow:
                await store.add(uow.session, note)
                await self._audit(uow.session, "create", note, organization_id, {"title": note.title})
                await uow.commit()
        except IntegrityError:  # the same request raced itself: return the winner
            async with self.db.unit_of_work() as uow:
                existing = await store.by_request_id(uow.session, key) if key else None
            if existing is None:
                raise
            return existing, revision
        return note, revision

    async def get(self, note_id: str) -> Note:
        async with self.db.unit_of_work() as uow:
            note = await store.get(uow.session, note_id)
        if note is None:
            raise errors.NotFound(RESOURCE_TYPE, note_id)
        return note

    async def list(self, workspace_id: str, size: int, token: str) -> tuple[list[Note], str]:
        limit = page_size(size)
        position = decode_token(token) or {}
        async with self.db.unit_of_work() as uow:
            page = await store.list_page(
                uow.session, workspace_id, after=str(position.get("after", "")), limit=limit + 1
            )
        more = len(page) > limit
        page = page[:limit]
        return page, encode_token({"after": page[-1].id}) if more else ""

    async def update(self, note_id: str, title: str | None, body: str | None, etag: str) -> Note:
        validate_content(title, body, creating=False)
        expected = None
        if etag:
            if not etag.startswith("v") or not etag[1:].isdigit():
                raise errors.InvalidArgument.field("etag", "is not an etag returned by this service")
            expected = int(etag[1:])
        changes = {k: v for k, v in (("title", title and title.strip()), ("body", body)) if v is not None}
        async with self.db.unit_of_work() as uow:
            current = await store.get(uow.session, note_id)
            if current is None:
                raise errors.NotFound(RESOURCE_TYPE, note_id)
            organization_id = await self._organization_of(current.workspace_id)
            if not await store.update(uow.session, note_id, changes, expected_version=expected, when=now()):
                raise errors.Aborted(
                    "the note changed since you read it; read it again", reason="ETAG_MISMATCH"
                )
            await self._audit(uow.session, "update", current, organization_id, {"fields": sorted(changes)})
            await uow.commit()
            return await store.get(uow.session, note_id)

    async def delete(self, note_id: str) -> None:
        from gatehouse.authz.v1 import relationship_pb2

        async with self.db.unit_of_work() as uow:
            current = await store.get(uow.session, note_id)
            if current is None or not await store.soft_delete(uow.session, note_id, now()):
                raise errors.NotFound(RESOURCE_TYPE, note_id)
            organization_id = await self._organization_of(current.workspace_id)
            await self._audit(uow.session, "delete", current, organization_id)
            await uow.commit()
        try:
            await self.authz.delete(
                relationship_pb2.RelationshipFilter(resource_type=RESOURCE_TYPE, resource_id=note_id),
                request_id=f"notes:unregister:{note_id}",
            )
        except errors.Unavailable as exc:
            log.warning("note %s deleted; its relationships stay in authz for now: %s", note_id, exc.message)
