"""Root pytest configuration: shared fixtures live in gatehouse.testing (libs/)."""

from gatehouse.kit.grpc_settings import apply_grpc_defaults

# The servers under test run with the grpc core settings of a service process; grpc reads them
# when it is first imported, which is after this file (the plugin below imports it).
if not apply_grpc_defaults():
    raise RuntimeError("grpc was imported before conftest.py could apply the service processes' settings")

pytest_plugins = ["gatehouse.testing.plugin"]
