from gatehouse.identity.v1 import identity_service_pb2 as pb


async def test_smoke(identity):
    jwks = await identity.stub.GetJwks(pb.GetJwksRequest())
    assert len(jwks.keys) == 1
    uid, token = await identity.user_token()
    got = await identity.stub.GetUser(
        pb.GetUserRequest(user_id=uid), metadata=[("authorization", f"Bearer {token}")]
    )
    assert got.user.id == uid


async def test_smoke_authz(tmp_path):
    from gatehouse.testing.identity import running_identity

    async with running_identity(tmp_path, with_authz=True) as identity:
        uid, token = await identity.user_token()
        md = [("authorization", f"Bearer {token}")]
        await identity.make_platform_admin(uid)
        users = await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=md)
        assert [u.id for u in users.users] == [uid]
