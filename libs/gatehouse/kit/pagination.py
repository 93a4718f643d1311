"""Opaque keyset page tokens (AIP-158) and page-size rules shared by every List RPC."""

from __future__ import annotations

import base64
import json

from gatehouse.kit import errors


def encode_token(position: dict) -> str:
    """An opaque token for the position after the last item of a page."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, field: str = "page_token") -> dict | None:
    """The position of a token (None for an empty token); INVALID_ARGUMENT for a bad one."""
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(value, dict):
            raise ValueError
        return value
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidArgument.field(field, "is not a token returned by this method") from None


def page_size(requested: int, *, default: int = 50, maximum: int = 1000, field: str = "page_size") -> int:
    if requested < 0:
        raise errors.InvalidArgument.field(field, "must not be negative")
    return min(requested or default, maximum)


def page_after(sorted_ids: list[str], token: str, size: int) -> tuple[list[str], str]:
    """A page of a sorted id list after the token's position, and the next token ('' at the end)."""
    position = decode_token(token)
    after = position.get("after", "") if position else ""
    import bisect

    start = bisect.bisect_right(sorted_ids, after) if after else 0
    page = sorted_ids[start : start + size]
    more = start + size < len(sorted_ids)
    return page, encode_token({"after": page[-1]}) if more and page else ""
