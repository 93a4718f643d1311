"""`python -m gatehouse_tenancy`: run the tenancy service (configuration from GATEHOUSE_* variables)."""

from gatehouse_tenancy.server import main

main()
