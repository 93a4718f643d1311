"""The unit of work the use cases run in: tenancy rows, authz outbox entries and audit events, one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gatehouse.kit import audit_log
from gatehouse.kit.db import Database
from gatehouse_tenancy.adapters import authz as az
from gatehouse_tenancy.adapters.repository import Repository

SERVICE = "tenancy"


def encode_update(spec: tuple):
    """A domain update spec → a RelationshipUpdate.

    ``("touch"|"delete", resource, relation, subject)``, ``("membership", org, user, status|None)``,
    ``("deleted", resource, bool)``, ``("require_mfa", org, bool)``.
    """
    kind = spec[0]
    if kind == "touch":
        return az.touch(*spec[1:])
    if kind == "delete":
        return az.delete(*spec[1:])
    if kind == "membership":
        return az.membership(*spec[1:])
    if kind == "deleted":
        return az.resource_state(*spec[1:])
    if kind == "require_mfa":
        return az.resource_settings(*spec[1:])
    raise ValueError(f"unknown authz update {spec!r}")


class Tx:
    """One transaction of a use case."""

    def __init__(self, uow):
        self.uow = uow
        self.repo = Repository(uow.session)
        self.authz_entries: list[str] = []

    async def authz(self, *updates: tuple) -> None:
        """Relationship changes to apply in authz once this transaction commits (in order, atomically)."""
        if updates:
            entry = await az.enqueue_write(self.uow.session, [encode_update(u) for u in updates])
            self.authz_entries.append(entry)

    async def authz_delete(self, **filter_fields: str) -> None:
        """Delete every relationship matching a ``RelationshipFilter`` once this transaction commits."""
        self.authz_entries.append(await az.enqueue_delete(self.uow.session, **filter_fields))

    async def audit(self, action: str, **fields: Any) -> None:
        await audit_log.record(self.uow.session, service=SERVICE, action=action, **fields)

    async def commit(self) -> None:
        await self.uow.commit()


class Transactions:
    """Opens :class:`Tx` units of work on the tenancy database."""

    def __init__(self, database: Database):
        self.db = database

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[Tx]:
        async with self.db.unit_of_work() as uow:
            yield Tx(uow)
