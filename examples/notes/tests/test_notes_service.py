"""The notes service end to end: a real authz (with the note type in its catalog), the real notes
server on 127.0.0.1:0 with its own database (SQLite and PostgreSQL), real signed tokens (TokenMint,
standing in for identity's keys)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa

from gatehouse.authz.v1 import relationship_pb2
from gatehouse.client import AuthzClient, StaticToken
from gatehouse.client.testing import active, start_authz, touch
from gatehouse.kit.status import bad_request, error_info
from gatehouse.testing.tokens import TokenMint
from gatehouse_notes.catalog import write_catalog
from gatehouse_notes.contracts import pb, pb_grpc
from gatehouse_notes.server import NotesServer, NotesSettings

# org o: workspace w — alice admin, mia member, vic viewer; carl in org o but not in w.
# org o2: eve, admin of her own workspace w2.
SEED = (
    touch(
        "workspace:w#parent@organization:o",
        "workspace:w#admin@user:alice",
        "workspace:w#member@user:mia",
        "workspace:w#viewer@user:vic",
        *[f"organization:o#member@user:{u}" for u in ("alice", "mia", "vic", "carl")],
        "workspace:w2#parent@organization:o2",
        "workspace:w2#admin@user:eve",
        "organization:o2#member@user:eve",
    )
    + [active("o", u) for u in ("alice", "mia", "vic", "carl")]
    + [active("o2", "eve")]
)


class Env:
    def __init__(self, mint, authz_server, authz_address, notes, stub, admin_authz):
        self.mint, self.authz_server, self.authz_address = mint, authz_server, authz_address
        self.notes, self.stub, self.admin_authz = notes, stub, admin_authz

    def as_(self, user: str, revision: int | None = None):
        md = self.mint.md(self.mint.user(user))
        if revision is not None:
            md.append(("x-gatehouse-revision", str(revision)))
        return md

    async def create(self, user="mia", title="Plan", **kw) -> pb.Note:
        answer = await self.stub.CreateNote(
            pb.CreateNoteRequest(workspace_id="w", title=title, body="b", **kw), metadata=self.as_(user)
        )
        return answer.note

    async def code_of(self, call) -> grpc.StatusCode:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def env(tmp_path, database_url):
    mint = TokenMint()
    catalog = write_catalog(tmp_path / "catalog.toml")
    authz_server, authz_address = await start_authz(
        tmp_path / "authz", f"sqlite+aiosqlite:///{tmp_path / 'authz.db'}", mint.verifier, catalog=catalog
    )
    async with grpc.aio.insecure_channel(authz_address) as seed_channel:
        await AuthzClient(seed_channel, token_source=StaticToken(mint.service("tenancy"))).write(SEED)
    settings = NotesSettings(
        listen_address="127.0.0.1:0",
        database_url=database_url,
        authz_address=authz_address,
        identity_address="127.0.0.1:1",  # unused: tokens are verified with the mint's key
        audit_address="127.0.0.1:1",
        data_dir=tmp_path,
        authz_timeout=2.0,  # generous for a busy test machine; a stopped authz is refused at once anyway
    )
    notes = NotesServer(
        settings,
        verifier=mint.verifier,
        service_token=StaticToken(mint.service("notes")),
        deliver_audit=False,
    )
    port = await notes.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    admin_channel = grpc.aio.insecure_channel(authz_address)
    admin_authz = AuthzClient(admin_channel, token_source=StaticToken(mint.service("tenancy")))
    yield Env(mint, authz_server, authz_address, notes, pb_grpc.NotesServiceStub(channel), admin_authz)
    await channel.close()
    await admin_channel.close()
    await notes.stop(0)  # ends its Watch stream first ...
    await asyncio.sleep(0.1)  # ... and lets authz see the stream cancelled before it stops
    await authz_server.stop(0)


async def test_viewers_read_members_write_admins_delete(env):
    note = await env.create("mia")
    assert note.creator_id == "mia" and note.etag == "v1"
    read = await env.stub.GetNote(pb.GetNoteRequest(note_id=note.id), metadata=env.as_("vic"))
    assert read.note.title == "Plan"
    listed = await env.stub.ListNotes(pb.ListNotesRequest(workspace_id="w"), metadata=env.as_("vic"))
    assert [n.id for n in listed.notes] == [note.id]
    # a viewer cannot write: neither create nor update
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.create("vic")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(info.value).metadata["capability"] == "manage:wiki"
    update = pb.UpdateNoteRequest(note_id=note.id, title="Hijacked")
    assert (
        await env.code_of(env.stub.UpdateNote(update, metadata=env.as_("vic")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # members edit but do not delete
    edited = await env.stub.UpdateNote(
        pb.UpdateNoteRequest(note_id=note.id, body="new body", etag="v1"), metadata=env.as_("mia")
    )
    assert (edited.note.body, edited.note.title, edited.note.etag) == ("new body", "Plan", "v2")
    delete = pb.DeleteNoteRequest(note_id=note.id)
    assert (
        await env.code_of(env.stub.DeleteNote(delete, metadata=env.as_("mia")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    await env.stub.DeleteNote(delete, metadata=env.as_("alice"))
    assert await env.code_of(
        env.stub.GetNote(pb.GetNoteRequest(note_id=note.id), metadata=env.as_("alice"))
    ) == (grpc.StatusCode.NOT_FOUND)


async def test_other_organization_gets_not_found(env):
    note = await env.create("mia")
    for call in (
        env.stub.GetNote(pb.GetNoteRequest(note_id=note.id), metadata=env.as_("eve")),
        env.stub.UpdateNote(pb.UpdateNoteRequest(note_id=note.id, title="x"), metadata=env.as_("eve")),
        env.stub.DeleteNote(pb.DeleteNoteRequest(note_id=note.id), metadata=env.as_("eve")),
        env.stub.ListNotes(pb.ListNotesRequest(workspace_id="w"), metadata=env.as_("eve")),
        env.stub.CreateNote(pb.CreateNoteRequest(workspace_id="w", title="x"), metadata=env.as_("eve")),
    ):
        assert await env.code_of(call) == grpc.StatusCode.NOT_FOUND
    # exactly what anyone gets for an id that does not exist
    missing = env.stub.GetNote(pb.GetNoteRequest(note_id="no-such-note"), metadata=env.as_("alice"))
    assert await env.code_of(missing) == grpc.StatusCode.NOT_FOUND
    # a member of the same organization outside the workspace may know it exists: PERMISSION_DENIED
    carl = env.stub.GetNote(pb.GetNoteRequest(note_id=note.id), metadata=env.as_("carl"))
    assert await env.code_of(carl) == grpc.StatusCode.PERMISSION_DENIED


async def test_callers_must_authenticate(env):
    request = pb.ListNotesRequest(workspace_id="w")
    assert await env.code_of(env.stub.ListNotes(request)) == grpc.StatusCode.UNAUTHENTICATED
    bad = [("authorization", "Bearer not-a-jwt")]
    assert await env.code_of(env.stub.ListNotes(request, metadata=bad)) == grpc.StatusCode.UNAUTHENTICATED
    foreign = TokenMint().user("vic")  # well-formed, signed by a key Gatehouse does not know
    assert await env.code_of(env.stub.ListNotes(request, metadata=env.mint.md(foreign))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_removing_a_member_takes_effect_on_the_next_call(env):
    note = await env.create("mia")
    get = pb.GetNoteRequest(note_id=note.id)
    for _ in range(3):  # allowed, and now cached in the notes service
        await env.stub.GetNote(get, metadata=env.as_("mia"))
    assert env.notes.authz.cache.hits >= 1
    revision = await env.admin_authz.delete(
        relationship_pb2.RelationshipFilter(
            resource_type="workspace", resource_id="w", subject_type="user", subject_id="mia"
        )
    )
    # the notes service follows authz's change stream; once it delivered the revision ...
    assert await env.notes.authz.wait_for_revision(revision, timeout=5.0)
    # ... the very next call is refused (mia is still in the organization: PERMISSION_DENIED)
    assert (
        await env.code_of(env.stub.GetNote(get, metadata=env.as_("mia"))) == grpc.StatusCode.PERMISSION_DENIED
    )
    # a caller holding the revision (the admin who removed her) need not wait for the stream
    again = await env.admin_authz.write(touch("workspace:w#member@user:mia"))
    answer = await env.stub.GetNote(get, metadata=env.as_("mia", revision=again))
    assert answer.note.id == note.id


async def test_refuses_rather_than_serves_when_authz_is_down(env):
    note = await env.create("mia")
    get = pb.GetNoteRequest(note_id=note.id)
    await env.stub.GetNote(get, metadata=env.as_("vic"))  # cached allow
    await env.authz_server.stop(0)
    for _ in range(250):  # the notes service notices its change stream broke (bounded: 5 s)
        if not env.notes.authz.coherent:
            break
        await asyncio.sleep(0.02)
    for call in (
        env.stub.GetNote(get, metadata=env.as_("vic")),
        env.stub.ListNotes(pb.ListNotesRequest(workspace_id="w"), metadata=env.as_("vic")),
        env.stub.CreateNote(pb.CreateNoteRequest(workspace_id="w", title="x"), metadata=env.as_("mia")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(info.value).metadata["dependency"] == "authz"


async def test_a_grant_lets_an_outsider_read_exactly_one_note(env):
    shared, private = await env.create("mia", title="Shared"), await env.create("mia", title="Private")
    # alice (workspace admin: `share` on notes) grants eve of another organization `read` on one note
    async with grpc.aio.insecure_channel(env.authz_address) as channel:
        as_alice = AuthzClient(channel, token_source=StaticToken(env.mint.user("alice")))
        revision = await as_alice.grant(("note", shared.id), "read", "user:eve")
    got = await env.stub.GetNote(pb.GetNoteRequest(note_id=shared.id), metadata=env.as_("eve", revision))
    assert got.note.title == "Shared"
    assert (
        await env.code_of(
            env.stub.GetNote(pb.GetNoteRequest(note_id=private.id), metadata=env.as_("eve", revision))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await env.code_of(
            env.stub.ListNotes(pb.ListNotesRequest(workspace_id="w"), metadata=env.as_("eve", revision))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    # she may know this note exists, but may not change it
    assert (
        await env.code_of(
            env.stub.UpdateNote(
                pb.UpdateNoteRequest(note_id=shared.id, title="x"), metadata=env.as_("eve", revision)
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )


async def test_create_is_idempotent_and_validated(env):
    first = await env.create("mia", request_id="req-1")
    again = await env.create("mia", request_id="req-1")
    assert again.id == first.id
    other_user = await env.create("alice", request_id="req-1")  # keys are per user
    assert other_user.id != first.id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.CreateNote(pb.CreateNoteRequest(workspace_id="w", title=" "), metadata=env.as_("mia"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad_request(info.value).field_violations] == ["title"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.ListNotes(pb.ListNotesRequest(), metadata=env.as_("mia"))
    assert [v.field for v in bad_request(info.value).field_violations] == ["workspace_id"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.UpdateNote(
            pb.UpdateNoteRequest(note_id=first.id, title="late", etag="v7"), metadata=env.as_("mia")
        )
    assert info.value.code() == grpc.StatusCode.ABORTED


async def test_list_pages_and_audit_events(env):
    created = [(await env.create("mia", title=f"n{i}")).id for i in range(5)]
    seen, token = [], ""
    for _ in range(10):
        page = await env.stub.ListNotes(
            pb.ListNotesRequest(workspace_id="w", page_size=2, page_token=token), metadata=env.as_("vic")
        )
        seen += [n.id for n in page.notes]
        token = page.next_page_token
        if not token:
            break
    assert seen == created
    await env.stub.UpdateNote(pb.UpdateNoteRequest(note_id=created[0], body="x"), metadata=env.as_("mia"))
    await env.stub.DeleteNote(pb.DeleteNoteRequest(note_id=created[1]), metadata=env.as_("alice"))
    async with env.notes.db.unit_of_work() as uow:
        pending = (
            await uow.session.execute(sa.text("SELECT count(*) FROM outbox WHERE topic = 'audit'"))
        ).scalar()
    assert pending == 7  # five creates, one update, one delete: each in its own transaction's outbox


async def test_health_and_reflection_need_no_token(env):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.notes.port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for r in stream for s in r.list_services_response.service]
        assert "gatehouse_notes.v1.NotesService" in services
