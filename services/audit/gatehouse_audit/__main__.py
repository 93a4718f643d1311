"""`python -m gatehouse_audit`: run the audit service (configuration from GATEHOUSE_* variables)."""

from gatehouse.kit.grpc_settings import apply_grpc_defaults

apply_grpc_defaults()  # before grpc is imported: grpc core reads its settings once, at import

from gatehouse_audit.server import main  # noqa: E402

main()
