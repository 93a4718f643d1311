"""Configuration: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gatehouse.kit.app import run_on_loop
from gatehouse.kit.config import ConfigError, Settings, positive_number
from gatehouse.kit.ids import new_id


def test_defaults(tmp_path):
    s = Settings.from_env("authz", {"GATEHOUSE_DATA_DIR": str(tmp_path)})
    assert s.listen_address == "127.0.0.1:50053"
    assert s.address_of("identity") == "127.0.0.1:50051"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'authz.db'}"
    assert s.log_level == "INFO" and s.otel_exporter == "none"


def test_overrides_and_per_service_database(tmp_path):
    env = {
        "GATEHOUSE_DATA_DIR": str(tmp_path),
        "GATEHOUSE_AUTHZ_ADDRESS": "127.0.0.1:6000",
        "GATEHOUSE_DATABASE_URL": "postgresql://postgres@127.0.0.1/all",
        "GATEHOUSE_AUDIT_DATABASE_URL": "postgresql://postgres@127.0.0.1/audit",
        "GATEHOUSE_LOG_LEVEL": "debug",
    }
    assert Settings.from_env("authz", env).listen_address == "127.0.0.1:6000"
    assert Settings.from_env("authz", env).database_url == "postgresql+psycopg://postgres@127.0.0.1/all"
    assert Settings.from_env("audit", env).database_url == "postgresql+psycopg://postgres@127.0.0.1/audit"
    assert Settings.from_env("audit", env).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEHOUSE_IDENTITY_ADDRESS", "nohost"),
        ("GATEHOUSE_LISTEN_ADDRESS", "127.0.0.1:99999"),
        ("GATEHOUSE_DATABASE_URL", "mysql://root@localhost/x"),
        ("GATEHOUSE_LOG_LEVEL", "LOUD"),
        ("GATEHOUSE_OTEL_EXPORTER", "zipkin"),
        ("GATEHOUSE_AUTHZ_TIMEOUT", "soon"),
        ("GATEHOUSE_SHUTDOWN_GRACE", "-1"),
        ("GATEHOUSE_EVENT_LOOP", "trio"),
    ],
)
def test_invalid_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env("identity", {variable: value})
    assert str(info.value).startswith(variable + ":")


def test_service_process_exits_with_the_variable_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gatehouse_authz"],
        env={"GATEHOUSE_DATA_DIR": str(tmp_path), "GATEHOUSE_LOG_LEVEL": "LOUD", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "GATEHOUSE_LOG_LEVEL" in proc.stderr


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        ("gatehouse_authz", "GATEHOUSE_AUTHZ_PRUNE_INTERVAL", "hourly"),
        ("gatehouse_authz", "GATEHOUSE_AUTHZ_CHANGELOG_RETENTION_HOURS", "0"),
        ("gatehouse_tenancy", "GATEHOUSE_TENANCY_PURGE_INTERVAL", "-5"),
    ],
)
def test_housekeeping_settings_stop_the_process_with_the_variable_named(tmp_path, module, variable, value):
    proc = subprocess.run(
        [sys.executable, "-m", module],
        env={"GATEHOUSE_DATA_DIR": str(tmp_path), variable: value, "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert variable in proc.stderr


@pytest.mark.parametrize(
    ("value", "kind", "problem"),
    [
        ("0", float, "greater than 0"),
        ("-2", int, "greater than 0"),
        ("nan", float, "greater than 0"),
        ("inf", float, "greater than 0"),
        ("soon", float, "is not a number of seconds"),
        ("1.5", int, "is not a whole number of seconds"),
    ],
)
def test_positive_numbers_are_finite_and_of_their_kind(value, kind, problem):
    with pytest.raises(ConfigError, match=f"GATEHOUSE_X: .*{problem}"):
        positive_number("GATEHOUSE_X", value, kind=kind)
    assert positive_number("GATEHOUSE_X", "2.5") == 2.5
    assert (
        positive_number("GATEHOUSE_X", "7", kind=int) == 7
        and type(positive_number("V", "7", kind=int)) is int
    )


def test_ids_are_sortable_uuid7():
    ids = [new_id() for _ in range(200)]
    assert all(i[14] == "7" for i in ids)
    assert len(set(ids)) == 200
    # same-millisecond ids may tie on the time prefix; the time prefix never goes backwards
    prefixes = [i[:13] for i in ids]
    assert prefixes == sorted(prefixes)


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_services_run_on_the_configured_event_loop():
    assert Settings.from_env("authz", {}).event_loop == "uvloop"  # the default
    assert Settings.from_env("authz", {"GATEHOUSE_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"
    assert run_on_loop(_loop_kind(), "uvloop") == "uvloop"
    assert run_on_loop(_loop_kind(), "asyncio") == "asyncio"
