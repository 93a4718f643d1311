"""Service credentials (environment or data directory) and the refreshing service-token source."""

from __future__ import annotations

import os
import stat
import time

import pytest

from gatehouse.kit import errors
from gatehouse.kit.service_auth import (
    ServiceCredentials,
    ServiceTokenSource,
    credentials_path,
    load_credentials,
    write_credentials,
)


def test_credentials_file_round_trip_is_private(tmp_path):
    assert load_credentials(tmp_path, "tenancy", environ={}) is None
    path = write_credentials(tmp_path, "tenancy", ServiceCredentials("cid", "csecret"))
    assert path == credentials_path(tmp_path, "tenancy")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_credentials(tmp_path, "tenancy", environ={}) == ServiceCredentials("cid", "csecret")


def test_environment_wins_over_the_file(tmp_path):
    write_credentials(tmp_path, "audit", ServiceCredentials("file-id", "file-secret"))
    env = {"GATEHOUSE_SERVICE_CLIENT_ID": "env-id", "GATEHOUSE_SERVICE_CLIENT_SECRET": "env-secret"}
    assert load_credentials(tmp_path, "audit", environ=env) == ServiceCredentials("env-id", "env-secret")


def test_unreadable_file_is_unavailable_not_a_crash(tmp_path):
    path = credentials_path(tmp_path, "authz")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(errors.Unavailable):
        load_credentials(tmp_path, "authz", environ={})


async def test_token_source_caches_and_refreshes_before_expiry():
    issued = []

    async def fetch():
        issued.append(time.time())
        # first token is about to expire (inside the margin), the second one is long-lived
        ttl = 30 if len(issued) == 1 else 900
        return f"token-{len(issued)}", time.time() + ttl

    source = ServiceTokenSource(fetch, margin=60)
    assert await source() == "token-1"
    assert await source() == "token-2"  # token-1 was within the refresh margin
    assert await source() == "token-2"  # cached
    assert len(issued) == 2
    source.invalidate()
    assert await source() == "token-3"
