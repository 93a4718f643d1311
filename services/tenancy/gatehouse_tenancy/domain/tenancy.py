"""The tenancy use cases, grouped by area, sharing one set of dependencies."""

from __future__ import annotations

from gatehouse_tenancy.domain.groups import Groups
from gatehouse_tenancy.domain.invitations import Invitations
from gatehouse_tenancy.domain.organizations import Organizations
from gatehouse_tenancy.domain.workspaces import Workspaces


class Tenancy:
    def __init__(self, **deps):
        self.orgs = Organizations(**deps)
        self.workspaces = Workspaces(**deps)
        self.groups = Groups(**deps)
        self.invitations = Invitations(**deps)
