"""Fixtures of identity's tests: a real identity server (and authz) per test, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gatehouse.testing.identity import running_identity


@pytest.fixture
async def identity(tmp_path, database_url):
    async with running_identity(tmp_path, database_url) as harness:
        yield harness


@pytest.fixture
async def identity_authz(tmp_path, database_url):
    """Identity plus a real authz; ``admin`` is a platform admin's access token."""
    async with running_identity(tmp_path, database_url, with_authz=True) as harness:
        yield harness
