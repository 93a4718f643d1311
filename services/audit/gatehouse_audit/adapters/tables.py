"""SQLAlchemy tables of the audit service (its own database only)."""

import sqlalchemy as sa

from gatehouse.kit.outbox import outbox_table

metadata = sa.MetaData()
outbox = outbox_table(metadata)
