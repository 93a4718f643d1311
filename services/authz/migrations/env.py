"""Alembic environment of the authz service (run by gatehouse.kit.migrations)."""

from gatehouse.kit.migrations import run_env
from gatehouse_authz.adapters.tables import metadata

run_env(metadata)
