"""Anchors of the audit chain head outside the database, so that deleting the newest rows is caught too.

The hash chain names any edited, inserted or deleted row, except at the very end: whoever can
write the database can delete the newest rows and move the head back.  So the head (seq, hash) is
appended now and then to a file outside the database (one JSON line, fsynced; ship it to
write-once storage or syslog for the best effect) and recorded in `audit_anchors`.  Verification
then demands that the chain still holds every anchored seq with its anchored hash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bastion.audit.log import GENESIS, verify_chain
from bastion.store.models import AuditAnchor, AuditEvent, AuditHead
from bastion.privatefiles import fsync_dir

log = logging.getLogger("bastion.audit")

ANCHOR_FILE = "audit-anchors.log"
DB_TIMEOUT = 30.0
IO_TIMEOUT = 30.0
_BATCH = 500
_MAX_LINE = 4096
_SHOWN = 5


def anchor_path(config: Any) -> Path:
    return Path(config["audit.anchor_file"] or config.data_dir / ANCHOR_FILE)


async def anchor_now(services: Any, syslog: Any = None) -> dict[str, Any]:
    """Append the chain head as one JSON line to the anchor file (0600, fsynced) and record it in the database."""
    async with asyncio.timeout(DB_TIMEOUT):
        async with services.db() as db:
            head = (await db.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one()
    at = services.clock.now()
    anchor = {"seq": int(head.seq), "hash": head.hash, "at": at.isoformat()}
    path = anchor_path(services.config)
    async with asyncio.timeout(IO_TIMEOUT):
        await asyncio.to_thread(_append_line, path, json.dumps(anchor, sort_keys=True, separators=(",", ":")))
    async with asyncio.timeout(DB_TIMEOUT):
        async with services.db() as db, db.begin():
            db.add(AuditAnchor(seq=anchor["seq"], hash=anchor["hash"], destination=str(path)[:256], anchored_at=at))
    if syslog is not None:
        syslog.submit_anchor(anchor)
    return {**anchor, "file": str(path)}


def _append_line(path: Path, line: str) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        os.write(fd, (line + "\n").encode())  # one write: appends from several processes do not interleave
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


async def anchor_loop(services: Any, interval: float | None = None, syslog: Any = None) -> None:
    """Anchor at start and then every `audit.anchor_interval` seconds when the head moved, until cancelled."""
    interval = interval or services.config["audit.anchor_interval"]
    last: tuple[int, str] | None = None
    while True:
        try:
            async with services.db() as db:
                async with asyncio.timeout(DB_TIMEOUT):
                    head = (await db.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
            if tuple(head) != last:
                anchor = await anchor_now(services, syslog=syslog)
                last = (anchor["seq"], anchor["hash"])
        except Exception as exc:  # a failed anchor must not end the loop; CancelledError still ends it
            log.error("audit anchor failed: %s", getattr(exc, "safe_message", None) or type(exc).__name__)
        await asyncio.sleep(interval)


def read_anchor_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The anchors in the file and a description of each line that is not one."""
    anchors, problems = [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if len(raw) > _MAX_LINE:
                problems.append(f"anchor file line {number} is too long (altered)")
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
                seq, digest, at = item["seq"], item["hash"], item["at"]
                valid = (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and isinstance(digest, str)
                         and len(digest) == 64 and isinstance(at, str))
            except (UnicodeDecodeError, ValueError, TypeError, KeyError):
                valid = False
            if not valid:
                problems.append(f"anchor file line {number} is not an anchor (altered)")
                continue
            anchors.append({"seq": seq, "hash": digest, "at": at, "where": f"anchor file line {number}"})
    return anchors, problems


async def verify_with_anchors(services: Any) -> tuple[bool, str]:
    """verify_chain, then every anchor (file and database): the chain must still hold that seq with that hash."""
    chain_ok, chain_message = await verify_chain(services.db)
    problems = [] if chain_ok else [chain_message]
    path = anchor_path(services.config)
    anchors: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            anchors, file_problems = await asyncio.to_thread(read_anchor_file, path)
        problems += file_problems
        file_state = f"{len(anchors)} anchors in {path.name}"
    except FileNotFoundError:
        file_state = f"no anchor file {path.name}"
    async with asyncio.timeout(DB_TIMEOUT):
        async with services.db() as db:
            recorded = (await db.execute(select(AuditAnchor).order_by(AuditAnchor.id))).scalars().all()
            if recorded and not anchors and file_state.startswith("no anchor file"):
                problems.append(f"the anchor file {path} is missing but the database records "
                                f"{len(recorded)} anchors (deleted?)")
            anchors += [{"seq": row.seq, "hash": row.hash, "at": row.anchored_at.isoformat(),
                         "where": f"anchor #{row.id} in the database"} for row in recorded]
            last_seq = (await db.execute(select(func.max(AuditEvent.seq)))).scalar_one_or_none() or 0
            problems += await _check_anchors(db, anchors, last_seq)
    if problems:
        problems = list(dict.fromkeys(problems))
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        return False, "; ".join(problems[:_SHOWN]) + more
    return True, f"{chain_message}; {file_state}, {len(recorded)} in the database, all match the chain"


async def _check_anchors(db: Any, anchors: list[dict[str, Any]], last_seq: int) -> list[str]:
    problems = []
    newest = max(anchors, key=lambda a: a["seq"], default=None)
    if newest is not None and newest["seq"] > last_seq:
        problems.append(f"audit log truncated: the chain ends at seq {last_seq}, but the anchor of {newest['at']} "
                        f"({newest['where']}) holds seq {newest['seq']}: events {last_seq + 1}..{newest['seq']} "
                        f"were deleted")
    wanted = sorted({a["seq"] for a in anchors if 0 < a["seq"] <= last_seq})
    stored: dict[int, str] = {0: GENESIS}
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start:start + _BATCH]
        rows = await db.execute(select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq.in_(batch)))
        stored.update({seq: digest for seq, digest in rows})
    for anchor in sorted(anchors, key=lambda a: a["seq"]):
        seq = anchor["seq"]
        if seq > last_seq:
            continue
        if seq not in stored:
            problems.append(f"event seq {seq} anchored at {anchor['at']} ({anchor['where']}) is gone (deleted)")
        elif stored[seq] != anchor["hash"]:
            problems.append(f"event seq {seq} no longer has the hash anchored at {anchor['at']} ({anchor['where']}): "
                            f"the chain up to it was rewritten")
    return problems


async def verify_for_cli(services: Any) -> tuple[bool, str]:
    """What `bastion audit verify` reports: the chain and its anchors."""
    return await verify_with_anchors(services)
