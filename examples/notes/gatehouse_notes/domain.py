"""Notes: the entity and its rules (no grpc, no sqlalchemy)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gatehouse.kit import errors

MAX_TITLE = 200
MAX_BODY = 100_000
RESOURCE_TYPE = "note"  # the authz type of a note (see note_type.toml)


@dataclass(frozen=True)
class Note:
    id: str
    workspace_id: str
    title: str
    body: str
    creator_id: str
    create_time: dt.datetime
    update_time: dt.datetime
    version: int = 1
    request_id: str | None = None
    delete_time: dt.datetime | None = None

    @property
    def etag(self) -> str:
        return f"v{self.version}"


def validate_content(title: str | None, body: str | None, *, creating: bool) -> None:
    """INVALID_ARGUMENT with one violation per bad field."""
    errs = errors.ErrorCollector()
    if creating or title is not None:
        errs.require(bool(title and title.strip()), "title", "is required")
        errs.require(title is None or len(title) <= MAX_TITLE, "title", f"at most {MAX_TITLE} characters")
    if body is not None:
        errs.require(len(body) <= MAX_BODY, "body", f"at most {MAX_BODY} characters")
    errs.raise_if_any()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
