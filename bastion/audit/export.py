"""Audit log export: JSON lines (every field, so the chain verifies offline) or CEF for SIEMs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import re
from typing import Any, AsyncIterator, Iterable

from sqlalchemy import select

from bastion import __version__
from bastion.audit.events import AuditRead
from bastion.audit.log import canonical, chain_hash
from bastion.errors import UsageError
from bastion.store.models import AuditEvent

FORMATS = ("jsonl", "cef")
PAGE = 1000
DB_TIMEOUT = 30.0
HASHED = ("seq", "ts", "type", "actor", "source", "target", "session_id", "outcome", "node", "details")

# CEF severity 0-10: what a SIEM should look at first.
_SEVERITY = {"hostkey.mismatch": 9, "recording.failure": 8, "auth.lockout": 7, "session.denied": 5,
             "transfer.denied": 5, "forward.denied": 5, "auth.failure": 5, "recording.shredded": 5,
             "backup.created": 4, "backup.restored": 6, "connection.refused": 4}
_BAD_OUTCOMES = ("failure", "denied", "refused", "locked")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def event_dict(row: AuditEvent) -> dict[str, Any]:
    """Every stored field of an event, as exported (ts exactly as hashed)."""
    return {"seq": row.seq, "ts": row.ts.isoformat(), "type": row.type, "actor": row.actor, "source": row.source,
            "target": row.target, "session_id": row.session_id, "outcome": row.outcome, "node": row.node,
            "details": row.details, "prev_hash": row.prev_hash, "hash": row.hash}


def jsonl_line(row: AuditEvent) -> str:
    return json.dumps(event_dict(row), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def cef_header(value: Any) -> str:
    """Escape a CEF header field: backslash and pipe; a header cannot hold line breaks."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return _CONTROL.sub("\ufffd", re.sub(r"[\r\n]+", " ", text))


def cef_value(value: Any) -> str:
    """Escape a CEF extension value: backslash, equals sign, and line breaks as \\n / \\r."""
    text = str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")
    return _CONTROL.sub("\ufffd", text)


def severity(event_type: str, outcome: str) -> int:
    if event_type in _SEVERITY:
        return _SEVERITY[event_type]
    if outcome in _BAD_OUTCOMES:
        return 6
    if event_type.startswith("admin."):
        return 4
    return 3


def cef_line(row: AuditEvent) -> str:
    """CEF:0|Bastion|Bastion|<version>|<type>|<type>|<severity>|<extension>"""
    header = ["CEF:0", "Bastion", "Bastion", __version__, row.type, row.type, str(severity(row.type, row.outcome))]
    fields: list[tuple[str, Any]] = [("rt", int(row.ts.timestamp() * 1000)), ("externalId", row.seq),
                                     ("suser", row.actor)]
    try:
        ipaddress.ip_address(row.source)
        fields.append(("src", row.source))
    except ValueError:
        fields.append(("shost", row.source))
    fields += [("outcome", row.outcome), ("dvchost", row.node),
               ("cs1Label", "target"), ("cs1", row.target),
               ("cs2Label", "sessionId"), ("cs2", row.session_id),
               ("cs3Label", "details"), ("cs3", canonical(row.details).decode()),
               ("cs4Label", "hash"), ("cs4", row.hash),
               ("cs5Label", "prevHash"), ("cs5", row.prev_hash)]
    extension = " ".join(f"{key}={cef_value(value)}" for key, value in fields)
    return "|".join([*(cef_header(part) for part in header), extension]) + "\n"


def parse_since(value: str | dt.datetime | None) -> dt.datetime | None:
    """ISO 8601 date or time (UTC when no offset is given)."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since: not an ISO 8601 date or time: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


async def export(services: Any, fmt: str, since: str | dt.datetime | None = None, *, actor: str = "",
                 source: str = "local") -> AsyncIterator[str]:
    """Yield the events (oldest first, from `since`) as lines in `fmt`; the read is audited when `actor` is given."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt[:20]!r} (jsonl or cef)")
    start = parse_since(since)
    render = jsonl_line if fmt == "jsonl" else cef_line
    if actor:
        await services.audit.emit(AuditRead(actor=actor[:128], source=source, purpose="export",
                                            query=f"format={fmt} since={start.isoformat() if start else '-'}"))
    last = 0
    while True:
        # Pages by seq rather than one long cursor: every database wait is bounded.
        query = select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(PAGE)
        if start is not None:
            query = query.where(AuditEvent.ts >= start)
        async with asyncio.timeout(DB_TIMEOUT):
            async with services.db() as db:
                rows = (await db.execute(query)).scalars().all()
        for row in rows:
            yield render(row)
        if len(rows) < PAGE:
            return
        last = rows[-1].seq


def verify_jsonl(lines: Iterable[str]) -> tuple[bool, str]:
    """Check an exported JSON-lines file offline: each event's hash and its link to the one before."""
    prev: str | None = None
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            digest = chain_hash(event["prev_hash"], {name: event[name] for name in HASHED})
        except (ValueError, KeyError, TypeError):
            return False, f"line {number} is not an exported event"
        if digest != event["hash"]:
            return False, f"line {number} (seq {event['seq']}) was edited"
        if prev is not None and event["prev_hash"] != prev:
            return False, f"line {number} (seq {event['seq']}) does not follow the line before (removed or reordered)"
        prev, count = event["hash"], count + 1
    return True, f"{count} events verified"
