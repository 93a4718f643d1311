"""`python -m gatehouse_identity`: run the identity service (configuration from GATEHOUSE_* variables)."""

from gatehouse.kit.grpc_settings import apply_grpc_defaults

apply_grpc_defaults()  # before grpc is imported: grpc core reads its settings once, at import

from gatehouse_identity.server import main  # noqa: E402

main()
