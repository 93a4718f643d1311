"""The NotesService servicer: one access rule per RPC, then one use case.

The rules are the whole access policy of the service — read them top to bottom:

| RPC        | capability   | on                              | who (default catalog)           |
|------------|--------------|---------------------------------|---------------------------------|
| CreateNote | `manage:wiki`| `workspace:<workspace_id>`      | workspace members and up        |
| ListNotes  | `view:wiki`  | `workspace:<workspace_id>`      | workspace viewers and up        |
| GetNote    | `read`       | `note:<note_id>`                | viewers, or a per-note grant    |
| UpdateNote | `write`      | `note:<note_id>`                | members, or a per-note grant    |
| DeleteNote | `delete`     | `note:<note_id>`                | admins and owners               |
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from gatehouse.client import from_field, requires
from gatehouse.kit.context import current_principal
from gatehouse_notes.contracts import pb, pb_grpc
from gatehouse_notes.domain import RESOURCE_TYPE, Note
from gatehouse_notes.service import Notes

IN_WORKSPACE = from_field("workspace", "workspace_id")
THE_NOTE = from_field(RESOURCE_TYPE, "note_id")


def _ts(value) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def note_pb(note: Note) -> pb.Note:
    return pb.Note(
        id=note.id,
        workspace_id=note.workspace_id,
        title=note.title,
        body=note.body,
        creator_id=note.creator_id,
        create_time=_ts(note.create_time),
        update_time=_ts(note.update_time),
        etag=note.etag,
    )


class NotesServicer(pb_grpc.NotesServiceServicer):
    def __init__(self, notes: Notes):
        self.notes = notes

    @requires("manage:wiki", resource=IN_WORKSPACE)
    async def CreateNote(self, request, context):
        note, revision = await self.notes.create(
            current_principal(), request.workspace_id, request.title, request.body, request.request_id
        )
        return pb.CreateNoteResponse(note=note_pb(note), authz_revision=revision)

    @requires("view:wiki", resource=IN_WORKSPACE)
    async def ListNotes(self, request, context):
        notes, token = await self.notes.list(request.workspace_id, request.page_size, request.page_token)
        return pb.ListNotesResponse(notes=[note_pb(n) for n in notes], next_page_token=token)

    @requires("read", resource=THE_NOTE)
    async def GetNote(self, request, context):
        return pb.GetNoteResponse(note=note_pb(await self.notes.get(request.note_id)))

    @requires("write", resource=THE_NOTE)
    async def UpdateNote(self, request, context):
        title = request.title if request.HasField("title") else None
        body = request.body if request.HasField("body") else None
        note = await self.notes.update(request.note_id, title, body, request.etag)
        return pb.UpdateNoteResponse(note=note_pb(note))

    @requires("delete", resource=THE_NOTE)
    async def DeleteNote(self, request, context):
        await self.notes.delete(request.note_id)
        return pb.DeleteNoteResponse()
