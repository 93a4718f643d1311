"""The notes service with the REAL identity and authz: users log in through the client library,
the notes service verifies their tokens against identity's JWKS and authenticates to authz with its
own service account (credentials file in its data directory)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gatehouse.client import AuthzClient, GatehouseClient, StaticToken
from gatehouse.client.testing import active, touch
from gatehouse.kit.status import error_info
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity
from gatehouse_notes.catalog import write_catalog
from gatehouse_notes.contracts import pb, pb_grpc
from gatehouse_notes.server import NotesServer, NotesSettings


@pytest.fixture
async def world(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_AUTHZ_CATALOG", str(write_catalog(tmp_path / "catalog.toml")))
    async with running_identity(tmp_path, with_authz=True) as identity:
        users = {name: await identity.create_user(f"{name}@example.com") for name in ("mia", "vic")}
        async with grpc.aio.insecure_channel(identity.authz_address) as channel:
            tenancy = AuthzClient(channel, token_source=StaticToken(await identity.service_token("tenancy")))
            await tenancy.write(
                touch(
                    "workspace:w#parent@organization:o",
                    f"workspace:w#member@user:{users['mia']}",
                    f"workspace:w#viewer@user:{users['vic']}",
                )
                + [active("o", uid) for uid in users.values()]
            )
        notes_dir = tmp_path / "notes"
        await identity.write_credentials(notes_dir, "notes")
        settings = NotesSettings(
            listen_address="127.0.0.1:0",
            database_url=database_url,
            authz_address=identity.authz_address,
            identity_address=identity.address,
            audit_address=identity.audit_address,
            data_dir=notes_dir,
        )
        notes = NotesServer(settings, deliver_audit=False)
        port = await notes.start()
        try:
            yield identity, f"127.0.0.1:{port}"
        finally:
            await notes.stop(0)


async def _user(identity, name: str, notes_address: str):
    client = GatehouseClient({"identity": identity.address, "authz": identity.authz_address})
    await client.login(f"{name}@example.com", DEFAULT_PASSWORD)
    return client, pb_grpc.NotesServiceStub(client.backend_channel(notes_address))


async def test_members_write_and_viewers_read_with_real_tokens(world):
    identity, address = world
    mia, mia_notes = await _user(identity, "mia", address)
    vic, vic_notes = await _user(identity, "vic", address)
    try:
        created = await mia_notes.CreateNote(
            pb.CreateNoteRequest(workspace_id="w", title="Real", request_id="r1")
        )
        assert created.note.creator_id == mia.user_id
        read = await vic_notes.GetNote(pb.GetNoteRequest(note_id=created.note.id))
        assert read.note.title == "Real"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await vic_notes.UpdateNote(pb.UpdateNoteRequest(note_id=created.note.id, title="no"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # after logout the session's access token stops working (revocations are polled every second)
        old_token = [("authorization", f"Bearer {vic.credentials.access_token}")]
        await vic.logout()
        codes = []
        for _ in range(40):  # bounded: 4 s
            try:
                await vic_notes.GetNote(pb.GetNoteRequest(note_id=created.note.id), metadata=old_token)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append((exc.code(), error_info(exc).reason))
                break
            await asyncio.sleep(0.1)
        assert codes[-1] == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED"), codes
    finally:
        await mia.close()
        await vic.close()
