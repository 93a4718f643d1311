"""`python -m gatehouse_authz`: run the authz service (configuration from GATEHOUSE_* variables)."""

from gatehouse_authz.server import main

main()
