"""Shared pytest fixtures for every test in the repo (registered by the root conftest.py)."""

from gatehouse.testing.db import *  # noqa: F403
