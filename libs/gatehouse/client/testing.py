"""Test helpers for backends that use the client: a real authz server and relationship shorthands.

``start_authz`` runs the real authz service (``gatehouse_authz``) in-process on
127.0.0.1:0 with the given database and token verifier (e.g.
``gatehouse.testing.tokens.TokenMint().verifier``), optionally with a catalog
override file. ``touch("workspace:w#viewer@user:u", ...)`` builds relationship
updates from their text form.
"""

from __future__ import annotations

import os
import pathlib

from gatehouse.kit.app import build_server
from gatehouse.kit.server import GatehouseServer
from gatehouse.testing.servers import settings_for

CATALOG_VARIABLE = "GATEHOUSE_AUTHZ_CATALOG"


async def start_authz(
    data_dir: pathlib.Path, database_url: str, verifier, *, catalog: pathlib.Path | None = None
) -> tuple[GatehouseServer, str]:
    """A started authz server (SERVING) and its address; ``await server.stop(0)`` to stop it."""
    from gatehouse_authz import server as authz_server

    settings = settings_for(data_dir, service="authz", database_url=database_url)

    def build(settings, runtime):
        previous = os.environ.get(CATALOG_VARIABLE)
        if catalog is not None:
            os.environ[CATALOG_VARIABLE] = str(catalog)  # read once, synchronously, by build()
        try:
            spec = authz_server.build(settings, runtime)
        finally:
            if catalog is not None:
                if previous is None:
                    os.environ.pop(CATALOG_VARIABLE, None)
                else:
                    os.environ[CATALOG_VARIABLE] = previous
        spec.verifier = verifier  # tokens signed by the test's key (identity is not running here)
        spec.depends_on = ()
        return spec

    server = build_server(settings, build)
    port = await server.start()
    await server.wait_started()
    return server, f"127.0.0.1:{port}"


def rel(text: str):
    """``"workspace:w#viewer@user:u"`` (or ``"note:n#grant:read@user:u"``) → a Relationship."""
    from gatehouse.authz.v1 import relationship_pb2
    from gatehouse.type.v1 import refs_pb2

    left, subject = text.split("@")
    resource, relation = left.split("#")
    rtype, rid = resource.split(":", 1)
    stype, sid = subject.split(":", 1)
    capability = ""
    if relation.startswith("grant:"):
        relation, capability = "grant", relation[len("grant:") :]
    return relationship_pb2.Relationship(
        resource=refs_pb2.ResourceRef(type=rtype, id=rid),
        relation=relation,
        subject=refs_pb2.SubjectRef(type=stype, id=sid),
        capability=capability,
    )


def touch(*texts: str) -> list:
    """TOUCH updates for relationships in text form."""
    from gatehouse.authz.v1 import relationship_pb2

    op = relationship_pb2.RelationshipUpdate.OPERATION_TOUCH
    return [relationship_pb2.RelationshipUpdate(operation=op, relationship=rel(t)) for t in texts]


def active(organization_id: str, user_id: str):
    """A TOUCH update making ``user_id`` an active member of ``organization_id``."""
    from gatehouse.authz.v1 import relationship_pb2

    return relationship_pb2.RelationshipUpdate(
        operation=relationship_pb2.RelationshipUpdate.OPERATION_TOUCH,
        membership_state=relationship_pb2.MembershipState(
            organization_id=organization_id, user_id=user_id, status=relationship_pb2.MEMBERSHIP_STATUS_ACTIVE
        ),
    )
