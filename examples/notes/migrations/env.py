"""Alembic environment of the notes example (run by gatehouse.kit.migrations)."""

from gatehouse_notes.store import metadata

from gatehouse.kit.migrations import run_env

run_env(metadata)
