"""Alembic environment of the audit service (run by gatehouse.kit.migrations)."""

from gatehouse.kit.migrations import run_env
from gatehouse_audit.adapters.tables import metadata

run_env(metadata)
