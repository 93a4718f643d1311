"""The hash chain: canonical bytes, keyed links, signed checkpoints, verification.

Each organization's events (and the platform's own, ``organization_id`` empty)
form one chain in the order audit stored them. Event ``n`` carries

    hash_n = HMAC-SHA256(chain_key, hash_{n-1} || canonical_bytes(event_n))

with ``hash_0`` the 32 zero bytes (or, after a retention purge, the hash of the
last purged event — the *anchor*, itself MACed so it cannot be forged). The
chain key lives in configuration, never in the database, so someone with only
database access can neither edit an event nor recompute the chain. Each event
also stores its predecessor's hash (``prev_hash``) and the id of the key that
linked it, which lets verification tell an *edited* event (its content no
longer matches its own hash) from a *reordered* one (intact, but linked to a
different predecessor) and a *key mismatch* (linked with a key we do not hold).

Checkpoints are Ed25519 signatures (``cryptography``) over (organization_id,
sequence, head_hash), meant to be stored elsewhere; a chain whose head is
behind, or differs from, a checkpoint the caller holds was truncated.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatehouse_audit.domain.model import ChainState, Event

GENESIS = bytes(32)
_EVENT_DOMAIN = b"gatehouse-audit-event/v1\n"
_ANCHOR_DOMAIN = b"gatehouse-audit-anchor/v1\n"
_CHECKPOINT_DOMAIN = b"gatehouse-audit-checkpoint/v1\n"
_KEY_ID_LABEL = b"gatehouse-audit-key-id"
MIN_KEY_BYTES = 32

# failure kinds (ChainFailure values without prefix)
EDITED, DELETED, REORDERED, TRUNCATED, KEY_MISMATCH = (
    "EDITED",
    "DELETED",
    "REORDERED",
    "TRUNCATED",
    "KEY_MISMATCH",
)


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical_bytes(event: Event) -> bytes:
    """The bytes an event's hash covers: every stored field except the chain fields.

    ``details`` is hashed as its stored canonical JSON text, so nothing is
    re-serialized between ingest and verification.
    """
    return _EVENT_DOMAIN + _compact(
        [
            event.id,
            event.organization_id,
            event.occur_us,
            event.ingest_us,
            event.service,
            event.action,
            event.actor_type,
            event.actor_id,
            event.actor_display,
            event.workspace_id,
            event.target_type,
            event.target_id,
            event.outcome,
            event.reason,
            event.request_id,
            event.trace_id,
            event.source_address,
            event.user_agent,
            event.details,
        ]
    )


def canonical_details(value: Mapping) -> str:
    """Canonical JSON text of structured details (sorted keys, compact, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ChainKey:
    """The HMAC key of the chain (plus previous keys, for verifying after a rotation)."""

    def __init__(self, current: bytes, previous: Iterable[bytes] = ()):
        keys = [current, *previous]
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"a chain key needs at least {MIN_KEY_BYTES} bytes")
        self.current = current
        self.key_id = key_id(current)
        self._ring = {key_id(k): k for k in keys}

    def mac(self, prev_hash: bytes, message: bytes, kid: str | None = None) -> bytes | None:
        """HMAC-SHA256 with the key ``kid`` (default: current); None if we do not hold that key."""
        key = self._ring.get(kid or self.key_id)
        if key is None:
            return None
        return hmac.new(key, prev_hash + message, hashlib.sha256).digest()

    def link(self, event: Event, prev_hash: bytes, message: bytes | None = None) -> None:
        """Chain ``event`` after ``prev_hash`` with the current key (sets prev_hash, hash, key_id).

        ``message`` is ``canonical_bytes(event)`` when the caller computed it already.
        """
        event.prev_hash = prev_hash
        event.key_id = self.key_id
        message = canonical_bytes(event) if message is None else message
        event.hash = hmac.new(self.current, prev_hash + message, hashlib.sha256).digest()

    def anchor_mac(self, organization_id: str, sequence: int, anchor_hash: bytes) -> bytes:
        return hmac.new(
            self.current, _ANCHOR_DOMAIN + _compact([organization_id, sequence, anchor_hash.hex()]), "sha256"
        ).digest()

    def anchor_valid(self, state: ChainState) -> bool:
        if state.anchor_sequence == 0:
            return True
        message = _ANCHOR_DOMAIN + _compact(
            [state.organization_id, state.anchor_sequence, state.anchor_hash.hex()]
        )
        return any(
            hmac.compare_digest(hmac.new(k, message, "sha256").digest(), state.anchor_mac)
            for k in self._ring.values()
        )


def key_id(key: bytes) -> str:
    """A public identifier of a chain key that reveals nothing about it."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


# ---- checkpoints ------------------------------------------------------------


def _checkpoint_message(organization_id: str, sequence: int, head_hash: bytes) -> bytes:
    return _CHECKPOINT_DOMAIN + _compact([organization_id, sequence, head_hash.hex()])


class CheckpointSigner:
    """Signs and verifies checkpoints with an Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_raw = raw
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, organization_id: str, sequence: int, head_hash: bytes) -> bytes:
        return self._private.sign(_checkpoint_message(organization_id, sequence, head_hash))

    def verify(self, organization_id: str, sequence: int, head_hash: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, _checkpoint_message(organization_id, sequence, head_hash))
            return True
        except InvalidSignature:
            return False


# ---- verification -----------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    failed_sequence: int = 0
    failed_event_id: str = ""
    failure: str = ""
    message: str = ""


class ChainWalk:
    """Verifies consecutive events of one chain, fed in sequence order (constant memory).

    ``first`` is the first sequence expected and ``prev_hash`` the hash it must
    link to. Call :meth:`feed` per event until it returns a failing
    :class:`Verdict`, then :meth:`finish` with the last sequence expected.
    """

    def __init__(self, key: ChainKey, first: int, prev_hash: bytes):
        self.key = key
        self.expected = first
        self.prev_hash = prev_hash
        self.checked = 0
        self.hashes_at: dict[int, bytes] = {}
        self.watch: set[int] = set()

    def feed(self, event: Event) -> Verdict | None:
        if event.sequence > self.expected:
            return self._fail(
                self.expected,
                "",
                DELETED,
                f"sequence {self.expected} is missing (next stored is {event.sequence})",
            )
        mac = self.key.mac(event.prev_hash, canonical_bytes(event), event.key_id)
        if mac is None:
            return self._fail(
                event.sequence,
                event.id,
                KEY_MISMATCH,
                f"event was linked with key {event.key_id!r}, which the configured chain key is not",
            )
        if not hmac.compare_digest(mac, event.hash):
            return self._fail(event.sequence, event.id, EDITED, "the event's content does not match its hash")
        if not hmac.compare_digest(event.prev_hash, self.prev_hash):
            return self._fail(
                event.sequence,
                event.id,
                REORDERED,
                "the event is intact but linked to a different predecessor",
            )
        if event.sequence in self.watch:
            self.hashes_at[event.sequence] = event.hash
        self.prev_hash = event.hash
        self.expected += 1
        self.checked += 1
        return None

    def finish(self, last: int) -> Verdict:
        if self.expected <= last:
            return self._fail(
                self.expected, "", TRUNCATED, f"the chain ends at {self.expected - 1}, expected up to {last}"
            )
        return Verdict(True, self.checked)

    def _fail(self, sequence: int, event_id: str, failure: str, message: str) -> Verdict:
        return Verdict(False, self.checked, sequence, event_id, failure, message)
