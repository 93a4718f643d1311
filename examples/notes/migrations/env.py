"""Alembic environment of the notes example (run by gatehouse.kit.migrations)."""

from gatehouse.kit.migrations import run_env
from gatehouse_notes.store import metadata

run_env(metadata)
