"""Root pytest configuration: shared fixtures live in gatehouse.testing (libs/)."""

pytest_plugins = ["gatehouse.testing.plugin"]
