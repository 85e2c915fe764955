"""The audit log: every event appended to one hash chain in the database, then acknowledged."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import Event
from bastion.clock import Clock
from bastion.store.models import AuditEvent, AuditHead

GENESIS = "0" * 64
log = logging.getLogger("bastion.audit")


def canonical(row: dict[str, Any]) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """hash = sha256(prev_hash || canonical_json(row))"""
    return hashlib.sha256(prev_hash.encode() + canonical(row)).hexdigest()


def hashed_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq, "ts": event.ts.isoformat(), "type": event.type, "actor": event.actor,
        "source": event.source, "target": event.target, "session_id": event.session_id,
        "outcome": event.outcome, "node": event.node, "details": event.details,
    }


class AuditLog:
    """Appends typed events; `emit` returns only after the event is committed."""

    def __init__(self, sessionmaker: async_sessionmaker, node: str, clock: Clock,
                 listeners: list[Callable[[AuditEvent], None]] | None = None):
        self._sessionmaker = sessionmaker
        self._node = node
        self._clock = clock
        # Called with every committed row (syslog forwarding); they must not block.
        self.listeners = listeners if listeners is not None else []
        self._listeners = self.listeners

    async def emit(self, event: Event) -> AuditEvent:
        details = json.loads(canonical(event.details()))
        async with self._sessionmaker() as db, db.begin():
            # Bumping the head row first takes the write lock (SQLite) or row lock (PostgreSQL),
            # so concurrent writers on any node append in one order.
            await db.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1))
            head = (await db.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one()
            row = AuditEvent(seq=head.seq, ts=self._clock.now(), type=event.event_type, actor=event.actor,
                             source=event.source, target=event.target, session_id=event.session_id,
                             outcome=event.outcome, node=self._node, details=details, prev_hash=head.hash)
            row.hash = chain_hash(head.hash, hashed_fields(row))
            head.hash = row.hash
            db.add(row)
        log.info("audit %s actor=%s target=%s outcome=%s", row.type, row.actor, row.target, row.outcome)
        for listener in self.listeners:
            listener(row)
        return row


async def verify_chain(sessionmaker: async_sessionmaker) -> tuple[bool, str]:
    """Walk the chain in order; return (ok, description of the first bad row)."""
    prev, expected_seq = GENESIS, 1
    async with sessionmaker() as db:
        result = await db.stream_scalars(select(AuditEvent).order_by(AuditEvent.seq))
        async for row in result:
            if row.seq != expected_seq:
                return False, f"sequence gap before seq {row.seq} (expected {expected_seq}): row deleted or inserted"
            if row.prev_hash != prev or chain_hash(prev, hashed_fields(row)) != row.hash:
                return False, f"row seq {row.seq} (id {row.id}) was edited or does not follow its predecessor"
            prev, expected_seq = row.hash, expected_seq + 1
        head = (await db.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one_or_none()
    if head is not None and (head.hash != prev or head.seq != expected_seq - 1):
        return False, "chain head does not match the last row: rows were removed from the end"
    return True, f"{expected_seq - 1} events verified"
