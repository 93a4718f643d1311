"""Alembic environment of the identity service (run by gatehouse.kit.migrations)."""

from gatehouse.kit.migrations import run_env
from gatehouse_identity.adapters.tables import metadata

run_env(metadata)
