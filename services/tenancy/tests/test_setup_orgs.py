"""First-time setup and organizations through real identity, authz and tenancy servers."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from gatehouse.kit.status import bad_request
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import setup_service_pb2 as spb

from .conftest import fails

Code = grpc.StatusCode


def bootstrap_request(email="root@example.com", slug="acme"):
    return spb.BootstrapRequest(
        admin_email=email,
        admin_password="Tall-Lantern-Quietly-42",
        admin_display_name="Root",
        organization_name="Acme",
        organization_slug=slug,
    )


async def test_bootstrap_once_and_only_once(env):
    assert not (await env.setup.GetSetupState(spb.GetSetupStateRequest())).bootstrapped
    # two concurrent bootstraps: exactly one wins
    results = await asyncio.gather(
        env.setup.Bootstrap(bootstrap_request()),
        env.setup.Bootstrap(bootstrap_request("other@example.com", "other")),
        return_exceptions=True,
    )
    ok = [x for x in results if not isinstance(x, Exception)]
    failed = [x for x in results if isinstance(x, Exception)]
    assert len(ok) == 1 and len(failed) == 1
    assert failed[0].code() == Code.FAILED_PRECONDITION
    answer = ok[0]
    assert (await env.setup.GetSetupState(spb.GetSetupStateRequest())).bootstrapped
    await fails(
        env.setup.Bootstrap(bootstrap_request("x@example.com", "x-org")),
        Code.FAILED_PRECONDITION,
        "ALREADY_BOOTSTRAPPED",
    )
    admin_id, org = answer.admin_user_id, answer.organization
    assert org.slug in ("acme", "other") and org.state == r.STATE_ACTIVE
    # the admin is platform admin and owner of the first organization, through authz
    assert await env.can(admin_id, "platform:platform", "platform:create_organization")
    assert await env.can(admin_id, f"organization:{org.id}", "org:transfer_ownership")
    # and can log in with the password given
    email = "root@example.com" if org.slug == "acme" else "other@example.com"
    assert await env.identity.login(email, "Tall-Lantern-Quietly-42")


async def test_bootstrap_validates_every_field(env):
    err = await fails(
        env.setup.Bootstrap(spb.BootstrapRequest(admin_email="nope", organization_slug="API")),
        Code.INVALID_ARGUMENT,
    )
    fields = {v.field for v in bad_request(err).field_violations}
    assert {"admin_email", "admin_password", "organization_name", "organization_slug"} <= fields
    # identity's password policy, reported on this request's field
    weak = bootstrap_request()
    weak.admin_password = "short"
    err = await fails(env.setup.Bootstrap(weak), Code.INVALID_ARGUMENT)
    assert {v.field for v in bad_request(err).field_violations} == {"admin_password"}
    assert not (await env.setup.GetSetupState(spb.GetSetupStateRequest())).bootstrapped


async def test_create_organization_rules(env):
    admin, owner, nobody = await env.admin(), await env.user(), await env.user()
    org = await env.org(admin, owner, name="Globex")
    assert await env.can(owner, f"organization:{org.id}", "org:delete")
    # only platform admins
    await fails(
        env.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="Mine", slug="mine-org", owner_user_id=nobody.id),
            metadata=nobody.md,
        ),
        Code.PERMISSION_DENIED,
        "CAPABILITY_DENIED",
    )
    # name unique case-insensitively, slug unique
    await fails(
        env.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="GLOBEX", slug="globex-2", owner_user_id=owner.id),
            metadata=admin.md,
        ),
        Code.ALREADY_EXISTS,
    )
    await fails(
        env.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="Globex 2", slug=org.slug, owner_user_id=owner.id),
            metadata=admin.md,
        ),
        Code.ALREADY_EXISTS,
    )
    for bad in ("admin", "a", "-abc", "abc-", "ABC", "a_b"):
        err = await fails(
            env.orgs.CreateOrganization(
                opb.CreateOrganizationRequest(name=f"N {bad}", slug=bad, owner_user_id=owner.id),
                metadata=admin.md,
            ),
            Code.INVALID_ARGUMENT,
        )
        assert [v.field for v in bad_request(err).field_violations] == ["slug"]
    # request_id: a retried create returns the same organization
    req = opb.CreateOrganizationRequest(
        name="Initech", slug="initech", owner_user_id=owner.id, request_id="r-1"
    )
    first = await env.orgs.CreateOrganization(req, metadata=admin.md)
    again = await env.orgs.CreateOrganization(req, metadata=admin.md)
    assert first.organization.id == again.organization.id


async def test_get_list_and_slug(env):
    admin, owner, stranger = await env.admin(), await env.user(), await env.user()
    a = await env.org(admin, owner)
    b = await env.org(admin, owner)
    other = await env.org(admin, stranger)
    got = await env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id=a.id), metadata=owner.md)
    assert got.organization.name == a.name
    # another organization's id: NOT_FOUND exactly like an unknown id
    e1 = await fails(
        env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id=other.id), metadata=owner.md),
        Code.NOT_FOUND,
    )
    e2 = await fails(
        env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id="nope"), metadata=owner.md),
        Code.NOT_FOUND,
    )
    assert e1.details().replace(other.id, "X") == e2.details().replace("nope", "X")
    # by slug without a token: public face only
    pub = await env.orgs.GetOrganizationBySlug(opb.GetOrganizationBySlugRequest(slug=a.slug))
    assert (pub.organization.id, pub.organization.name) == (a.id, a.name)
    assert not pub.organization.HasField("settings")
    # list: the caller's organizations, keyset-paginated
    page1 = await env.orgs.ListOrganizations(opb.ListOrganizationsRequest(page_size=1), metadata=owner.md)
    page2 = await env.orgs.ListOrganizations(
        opb.ListOrganizationsRequest(page_size=1, page_token=page1.next_page_token), metadata=owner.md
    )
    assert page2.next_page_token == ""
    assert sorted(o.id for o in [*page1.organizations, *page2.organizations]) == sorted([a.id, b.id])
    # platform admins see all, with a filter
    every = await env.orgs.ListOrganizations(opb.ListOrganizationsRequest(page_size=100), metadata=admin.md)
    assert {a.id, b.id, other.id} <= {o.id for o in every.organizations}
    filtered = await env.orgs.ListOrganizations(
        opb.ListOrganizationsRequest(filter=f"slug:{other.slug}"), metadata=admin.md
    )
    assert [o.id for o in filtered.organizations] == [other.id]
    await fails(
        env.orgs.ListOrganizations(opb.ListOrganizationsRequest(filter="slug:x"), metadata=owner.md),
        Code.INVALID_ARGUMENT,
    )


async def test_update_organization_name_by_admins_settings_by_owner(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    org_admin = await env.member(owner, org.id, r.ORG_ROLE_ADMIN)
    viewer = await env.member(owner, org.id, r.ORG_ROLE_VIEWER)

    def update(paths, **fields):
        settings = fields.pop("settings", None)
        o = r.Organization(id=org.id, **fields)
        if settings:
            o.settings.CopyFrom(settings)
        return opb.UpdateOrganizationRequest(
            organization=o, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    renamed = await env.orgs.UpdateOrganization(update(["name"], name="Renamed"), metadata=org_admin.md)
    assert renamed.organization.name == "Renamed"
    await fails(
        env.orgs.UpdateOrganization(update(["name"], name="X"), metadata=viewer.md), Code.PERMISSION_DENIED
    )
    mfa = r.OrganizationSettings(require_mfa=True)
    await fails(
        env.orgs.UpdateOrganization(update(["settings.require_mfa"], settings=mfa), metadata=org_admin.md),
        Code.PERMISSION_DENIED,
    )
    # stale etag
    await fails(
        env.orgs.UpdateOrganization(update(["name"], name="Y", etag='W/"1"'), metadata=owner.md), Code.ABORTED
    )
    done = await env.orgs.UpdateOrganization(
        update(["settings.require_mfa"], settings=mfa), metadata=owner.md
    )
    assert done.organization.settings.require_mfa
    # require_mfa reached authz: a password-only session is now denied in the organization
    assert not await env.can(viewer, f"organization:{org.id}", "org:view")


async def test_members_roles_status_and_owner_rules(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    oref = f"organization:{org.id}"
    m1 = await env.member(owner, org.id, r.ORG_ROLE_MEMBER)
    assert await env.can(m1, oref, "org:view") and not await env.can(m1, oref, "org:invite")
    # an existing account is never given a password by an organization admin
    await fails(
        env.orgs.CreateOrganizationMember(
            opb.CreateOrganizationMemberRequest(
                organization_id=org.id,
                email=m1.email,
                initial_password="Another-Long-Pass-77",
                role=r.ORG_ROLE_MEMBER,
            ),
            metadata=owner.md,
        ),
        Code.ALREADY_EXISTS,
    )
    # nobody becomes owner through a role change
    await fails(
        env.orgs.UpdateOrganizationMember(
            opb.UpdateOrganizationMemberRequest(organization_id=org.id, user_id=m1.id, role=r.ORG_ROLE_OWNER),
            metadata=owner.md,
        ),
        Code.INVALID_ARGUMENT,
    )
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(organization_id=org.id, user_id=m1.id, role=r.ORG_ROLE_ADMIN),
        metadata=owner.md,
    )
    assert await env.can(m1, oref, "org:invite")
    # deactivation keeps the role but denies everything; reactivation restores
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=m1.id, status=r.MEMBER_STATUS_INACTIVE
        ),
        metadata=owner.md,
    )
    assert not await env.can(m1, oref, "org:view")
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=m1.id, status=r.MEMBER_STATUS_ACTIVE
        ),
        metadata=owner.md,
    )
    assert await env.can(m1, oref, "org:invite")
    # the owner cannot be demoted, deactivated or removed
    for req in (
        opb.UpdateOrganizationMemberRequest(organization_id=org.id, user_id=owner.id, role=r.ORG_ROLE_ADMIN),
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=owner.id, status=r.MEMBER_STATUS_INACTIVE
        ),
    ):
        await fails(
            env.orgs.UpdateOrganizationMember(req, metadata=m1.md),
            Code.FAILED_PRECONDITION,
            "OWNER_CANNOT_BE_REMOVED",
        )
    await fails(
        env.orgs.RemoveOrganizationMember(
            opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=owner.id), metadata=m1.md
        ),
        Code.FAILED_PRECONDITION,
        "OWNER_CANNOT_BE_REMOVED",
    )
    # list with names and emails from identity
    listed = await env.orgs.ListOrganizationMembers(
        opb.ListOrganizationMembersRequest(organization_id=org.id), metadata=m1.md
    )
    by_id = {x.user_id: x for x in listed.members}
    assert by_id[owner.id].role == r.ORG_ROLE_OWNER and by_id[owner.id].email == owner.email
    assert by_id[m1.id].role == r.ORG_ROLE_ADMIN and by_id[m1.id].display_name == "Member"
    first = await env.orgs.ListOrganizationMembers(
        opb.ListOrganizationMembersRequest(organization_id=org.id, page_size=1), metadata=m1.md
    )
    rest = await env.orgs.ListOrganizationMembers(
        opb.ListOrganizationMembersRequest(organization_id=org.id, page_token=first.next_page_token),
        metadata=m1.md,
    )
    assert [x.user_id for x in [*first.members, *rest.members]] == sorted(by_id)
    assert rest.next_page_token == ""
    await fails(
        env.orgs.ListOrganizationMembers(
            opb.ListOrganizationMembersRequest(organization_id=org.id, page_token="not-a-token"),
            metadata=m1.md,
        ),
        Code.INVALID_ARGUMENT,
    )
    # a member may remove themselves
    await env.orgs.RemoveOrganizationMember(
        opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=m1.id), metadata=m1.md
    )
    assert not await env.can(m1, oref, "org:view")


async def test_concurrent_ownership_transfers_leave_exactly_one_owner(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    candidates = [await env.member(owner, org.id, r.ORG_ROLE_ADMIN) for _ in range(3)]
    results = await asyncio.gather(
        *[
            env.orgs.TransferOrganizationOwnership(
                opb.TransferOrganizationOwnershipRequest(organization_id=org.id, new_owner_user_id=c.id),
                metadata=owner.md,
            )
            for c in candidates
        ],
        *[
            env.orgs.UpdateOrganizationMember(
                opb.UpdateOrganizationMemberRequest(
                    organization_id=org.id, user_id=c.id, role=r.ORG_ROLE_VIEWER
                ),
                metadata=owner.md,
            )
            for c in candidates
        ],
        return_exceptions=True,
    )
    transfers = results[:3]
    assert sum(not isinstance(x, Exception) for x in transfers) == 1
    assert {x.code() for x in transfers if isinstance(x, Exception)} <= {Code.ABORTED, Code.PERMISSION_DENIED}
    listed = await env.orgs.ListOrganizationMembers(
        opb.ListOrganizationMembersRequest(organization_id=org.id), metadata=admin.md
    )
    owners = [x.user_id for x in listed.members if x.role == r.ORG_ROLE_OWNER]
    assert len(owners) == 1
    # authz agrees: exactly one user holds the owner relation, and it is the same one
    rels = await env.relationships(resource_type="organization", resource_id=org.id, relation="owner")
    assert rels == [f"organization:{org.id}#owner@user:{owners[0]}"]
    assert owner.id not in owners
    # the old owner became admin
    assert await env.can(owner, f"organization:{org.id}", "org:invite")
    assert not await env.can(owner, f"organization:{org.id}", "org:delete")


async def test_retried_changes_answer_like_the_first_call(env):
    from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
    from gatehouse.type.v1 import refs_pb2

    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    heir, leaver = await env.member(owner, org.id), await env.member(owner, org.id)
    ws = await env.workspace(owner, org.id)
    add = wpb.AddWorkspaceMemberRequest(
        workspace_id=ws.id, principal=refs_pb2.SubjectRef(type="user", id=heir.id), request_id="add-1"
    )
    first = await env.ws.AddWorkspaceMember(add, metadata=owner.md)
    assert (await env.ws.AddWorkspaceMember(add, metadata=owner.md)).member == first.member
    # without a request_id the second add is a conflict
    add.request_id = ""
    await fails(env.ws.AddWorkspaceMember(add, metadata=owner.md), Code.ALREADY_EXISTS)
    remove = opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=leaver.id, request_id="rm-1")
    await env.orgs.RemoveOrganizationMember(remove, metadata=owner.md)
    await env.orgs.RemoveOrganizationMember(remove, metadata=owner.md)
    transfer = opb.TransferOrganizationOwnershipRequest(
        organization_id=org.id, new_owner_user_id=heir.id, request_id="tr-1"
    )
    await env.orgs.TransferOrganizationOwnership(transfer, metadata=owner.md)
    # the old owner (now admin, without org:transfer_ownership) retries: same answer, no new change
    again = await env.orgs.TransferOrganizationOwnership(transfer, metadata=owner.md)
    assert again.organization.id == org.id
    assert await env.can(heir, f"organization:{org.id}", "org:transfer_ownership")


async def test_no_token_is_unauthenticated_and_authz_down_fails_closed(env, database_url):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    await fails(
        env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id=org.id)), Code.UNAUTHENTICATED
    )
    await env.identity.authz_server.stop(0)
    err = await fails(
        env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id=org.id), metadata=owner.md),
        Code.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
    )
    assert "authz" in err.details() or "authorization" in err.details()
    await fails(
        env.orgs.DeleteOrganization(opb.DeleteOrganizationRequest(organization_id=org.id), metadata=owner.md),
        Code.UNAVAILABLE,
    )
    # nothing changed while authz was away
    import sqlalchemy as sa

    from gatehouse.kit.db import Database

    db = Database(database_url)
    try:
        async with db.unit_of_work() as uow:
            state = await uow.session.execute(
                sa.text("SELECT state FROM organizations WHERE id = :i"), {"i": org.id}
            )
            assert state.scalar_one() == "ACTIVE"
    finally:
        await db.dispose()
