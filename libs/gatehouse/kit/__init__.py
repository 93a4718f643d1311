"""The shared server kit: one implementation of what every Gatehouse service needs.

Domain code imports only :mod:`gatehouse.kit.errors` (no grpc, no sqlalchemy);
everything else here is wiring used by the services' ``server.py`` and adapters.
"""
