"""Audit use cases: ingest, verify, checkpoint, purge, audit's own events.

Storage comes in as ``store`` (see ``adapters/store.py``); nothing here imports
grpc or sqlalchemy.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatehouse.kit import errors
from gatehouse.kit.ids import new_id
from gatehouse_audit.domain.chain import (
    DELETED,
    GENESIS,
    TRUNCATED,
    ChainKey,
    ChainWalk,
    CheckpointSigner,
    Verdict,
    canonical_details,
)
from gatehouse_audit.domain.model import PLATFORM, ChainState, Event, IngestResult
from gatehouse_audit.domain.retention import DAY_US

SERVICE = "audit"
PURGE_ACTION = "audit.events.purge"
READ_ACTION = "audit.events.read"


@dataclass(frozen=True)
class SignedCheckpoint:
    organization_id: str
    sequence: int
    head_hash: bytes
    signature: bytes
    key_id: str
    create_us: int


def own_event(
    action: str,
    organization_id: str,
    details: Mapping[str, Any],
    *,
    actor: tuple[str, str, str] = ("service", SERVICE, SERVICE),
    target: tuple[str, str] = ("", ""),
    request_id: str = "",
) -> Event:
    """An event audit writes about itself (purges, reads across organizations)."""
    return Event(
        id=new_id(),
        occur_us=time.time_ns() // 1000,
        service=SERVICE,
        action=action,
        actor_type=actor[0],
        actor_id=actor[1],
        actor_display=actor[2],
        organization_id=organization_id,
        target_type=target[0],
        target_id=target[1],
        request_id=request_id,
        details=canonical_details(details),
    )


class Audit:
    def __init__(self, store, key: ChainKey, signer: CheckpointSigner, default_retention_days: int = 365):
        self.store = store
        self.key = key
        self.signer = signer
        self.default_retention_days = default_retention_days

    async def ingest(self, batch: list[Event]) -> IngestResult:
        return await self.store.ingest(batch)

    async def record(self, event: Event) -> None:
        await self.store.ingest([event])

    async def _state(self, org: str) -> ChainState:
        return await self.store.chain_state(org) or ChainState(org, head_hash=GENESIS)

    # ---- checkpoints --------------------------------------------------------
    async def checkpoint(self, org: str) -> SignedCheckpoint:
        state = await self._state(org)
        return SignedCheckpoint(
            org,
            state.head_sequence,
            state.head_hash,
            self.signer.sign(org, state.head_sequence, state.head_hash),
            self.signer.key_id,
            time.time_ns() // 1000,
        )

    # ---- verification -------------------------------------------------------
    async def verify(
        self,
        org: str,
        from_sequence: int = 0,
        to_sequence: int = 0,
        checkpoint: SignedCheckpoint | None = None,
    ) -> Verdict:
        """Walk the chain from ``from_sequence`` (default: just after the anchor) to ``to_sequence``
        (default: the head), and compare against the caller's checkpoint."""
        errs = errors.ErrorCollector()
        errs.require(from_sequence >= 0, "from_sequence", "must not be negative")
        errs.require(to_sequence >= 0, "to_sequence", "must not be negative")
        errs.require(
            not to_sequence or to_sequence >= from_sequence, "to_sequence", "must not be before from_sequence"
        )
        if checkpoint is not None:
            errs.require(
                checkpoint.organization_id == org, "checkpoint.organization_id", "is another chain's"
            )
            errs.require(
                self.signer.verify(org, checkpoint.sequence, checkpoint.head_hash, checkpoint.signature),
                "checkpoint.signature",
                "does not verify with this service's checkpoint key",
            )
        errs.raise_if_any()
        state = await self._state(org)
        start = state.anchor_sequence + 1
        if from_sequence and from_sequence < start:
            raise errors.InvalidArgument.field(
                "from_sequence", f"events up to {state.anchor_sequence} were removed by retention"
            )
        if not self.key.anchor_valid(state):
            return Verdict(
                False,
                0,
                state.anchor_sequence,
                "",
                DELETED,
                f"events up to {state.anchor_sequence} are gone and the anchor was not written by a purge",
            )
        first = from_sequence or start
        # Without an end, walk every stored row: a row past the head can only have been put there by hand.
        last = to_sequence or max(state.head_sequence, await self.store.max_sequence(org))
        if checkpoint is not None:
            last = max(last, checkpoint.sequence)
        if first == start:
            prev = state.anchor_hash if state.anchor_sequence else GENESIS
        else:
            before = await self.store.event_at(org, first - 1)
            if before is None:
                return Verdict(False, 0, first - 1, "", DELETED, f"sequence {first - 1} is missing")
            prev = before.hash
        walk = ChainWalk(self.key, first, prev)
        if checkpoint is not None:
            walk.watch.add(checkpoint.sequence)
        async for event in self.store.walk(org, first, last):
            failed = walk.feed(event)
            if failed is not None:
                return failed
        verdict = walk.finish(last)
        if not verdict.ok or checkpoint is None:
            return verdict
        return await self._against_checkpoint(org, state, walk, checkpoint, verdict)

    async def _against_checkpoint(
        self, org: str, state: ChainState, walk: ChainWalk, cp: SignedCheckpoint, verdict: Verdict
    ) -> Verdict:
        if cp.sequence == 0:
            return verdict
        if cp.sequence in walk.hashes_at:
            stored = walk.hashes_at[cp.sequence]
        elif cp.sequence == state.anchor_sequence:
            stored = state.anchor_hash
        elif cp.sequence < state.anchor_sequence:
            return verdict  # purged by retention; later events verified from the anchor
        else:
            event = await self.store.event_at(org, cp.sequence)
            stored = event.hash if event else b""
        if not hmac.compare_digest(stored, cp.head_hash):
            return Verdict(
                False,
                verdict.checked,
                cp.sequence,
                "",
                TRUNCATED,
                f"the chain differs from the checkpoint at sequence {cp.sequence}",
            )
        return verdict

    # ---- retention ----------------------------------------------------------
    async def purge_expired(self, now_us: int | None = None) -> dict[str, int]:
        """Purge every chain past its retention; returns removed counts per organization."""
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        configured = await self.store.retention_days()
        removed: dict[str, int] = {}
        for org in await self.store.chain_ids():
            days = configured.get(org, self.default_retention_days)
            cutoff = now_us - days * DAY_US

            def record(count: int, through: int, org=org, days=days, cutoff=cutoff) -> Event:
                return own_event(
                    PURGE_ACTION,
                    org,
                    {
                        "removed_count": count,
                        "through_sequence": through,
                        "retention_days": days,
                        "cutoff_us": cutoff,
                    },
                    target=("audit_chain", org or "platform"),
                )

            count, _ = await self.store.purge(org, cutoff, record)
            if count:
                removed[org] = count
        return removed

    async def record_read(
        self, actor_id: str, rpc: str, scope: Mapping[str, Any], request_id: str = ""
    ) -> None:
        """A read across organizations (platform scope) is itself an event of the platform chain."""
        target = (
            ("organization", scope["organization_id"])
            if scope.get("organization_id")
            else ("platform", "platform")
        )
        await self.record(
            own_event(
                READ_ACTION,
                PLATFORM,
                {"rpc": rpc, **scope},
                actor=("user", actor_id, ""),
                target=target,
                request_id=request_id,
            )
        )
