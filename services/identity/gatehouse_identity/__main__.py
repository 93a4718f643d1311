"""`python -m gatehouse_identity`: run the identity service (configuration from GATEHOUSE_* variables)."""

from gatehouse_identity.server import main

main()
