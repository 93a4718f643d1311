"""`python -m gatehouse_tenancy`: run the tenancy service (configuration from GATEHOUSE_* variables)."""

from gatehouse.kit.grpc_settings import apply_grpc_defaults

apply_grpc_defaults()  # before grpc is imported: grpc core reads its settings once, at import

from gatehouse_tenancy.server import main  # noqa: E402

main()
