"""Alembic environment of the tenancy service (run by gatehouse.kit.migrations)."""

from gatehouse.kit.migrations import run_env
from gatehouse_tenancy.adapters.tables import metadata

run_env(metadata)
