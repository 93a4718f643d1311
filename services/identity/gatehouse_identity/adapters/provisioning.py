"""Development provisioning: one service account per Gatehouse service, credentials in the data dir.

On start identity makes sure each name in
:data:`gatehouse.kit.service_auth.PROVISIONED_SERVICES` has an account and that
``$DATA_DIR/credentials/<name>.json`` (mode 0600) holds working credentials
for it. A file that exists and still matches its account is left alone; a
missing or stale one is (re)written with a new secret. Disable with
``GATEHOUSE_IDENTITY_PROVISION_SERVICE_ACCOUNTS=false`` in production and hand
credentials over with ``GATEHOUSE_SERVICE_CLIENT_ID/SECRET`` instead.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable

from gatehouse.kit import errors
from gatehouse.kit.service_auth import (
    PROVISIONED_SERVICES,
    ServiceCredentials,
    load_credentials,
    write_credentials,
)

log = logging.getLogger("gatehouse.identity.provisioning")


async def provision_service_accounts(
    service, data_dir: pathlib.Path, names: Iterable[str] = PROVISIONED_SERVICES
) -> list[str]:
    """Ensure accounts and credential files; returns the names whose file was (re)written."""
    written = []
    for name in names:
        try:
            existing = load_credentials(data_dir, name, environ={})
        except errors.Unavailable:
            existing = None
        created = await service.ensure_service_account(
            name, existing.client_id if existing else "", existing.client_secret if existing else ""
        )
        if created is not None:
            path = write_credentials(
                data_dir, name, ServiceCredentials(created.account.client_id, created.secret)
            )
            log.info("service account %s provisioned; credentials in %s", name, path)
            written.append(name)
    return written
