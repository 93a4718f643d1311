"""`python -m gatehouse_audit`: run the audit service (configuration from GATEHOUSE_* variables)."""

from gatehouse_audit.server import main

main()
