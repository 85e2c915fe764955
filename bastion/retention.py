"""Retention: recordings past their retention are crypto-shredded, unless their session is on legal hold.

A recording's data key exists in one place only: wrapped by the vault in the file's preamble
(see bastion/recorder/container.py; the keyframe sidecar is sealed under the same key).  Shredding
overwrites those key bytes in place, fsyncs, and only then unlinks the file.  Deleting alone is not
enough on a journaling filesystem: unlinking frees the blocks but leaves their content on disk
until reused, and an old copy of the preamble would still hold the wrapped key.  Overwriting in
place first means that, on filesystems that overwrite in place (ext4, xfs in their default modes),
the chunk blocks left behind are ciphertext whose key no longer exists anywhere.  Where the storage
does not overwrite in place (copy-on-write filesystems such as btrfs or ZFS, data=journal mode,
flash remapping, snapshots) an old copy of the preamble may survive; there, encrypt the volume
(dm-crypt) and rotate it, and remember that backups keep what they captured until they expire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update

from bastion.audit.events import AdminChange, RecordingShredded
from bastion.errors import Conflict, NotFound
from bastion.recorder import container
from bastion.store.models import Recording, SearchEntry, Session, Target
from bastion.privatefiles import fsync_dir

log = logging.getLogger("bastion.retention")

DB_TIMEOUT = 30.0
IO_TIMEOUT = 30.0
DEFAULT_INTERVAL = 3600.0
# Files written next to a recording and sealed under its data key (replay seek points).
SIDECAR_SUFFIXES = (".bkf", ".bkf.tmp")
_WRAPPED_KEY_FIELD = b'"wrapped_key":"'


@dataclass(frozen=True)
class _Candidate:
    recording_id: str
    session_id: str
    path: str
    target: str
    node: str
    ended_at: dt.datetime
    retention_days: int


class _Held(Exception):
    """The session went on legal hold while its recording was being claimed."""


async def apply_retention(services: Any, now: dt.datetime | None = None, *, dry_run: bool = False,
                          actor: str = "retention") -> list[dict[str, Any]]:
    """Crypto-shred every recording past its retention; return one dict per recording shredded.

    Retention is the target's `retention_days` when set, else `recording.retention_days`; 0 keeps
    forever.  A session "ended" at its end time, or (crash) when its recording was closed.  With
    `dry_run` nothing changes and the dicts say "would shred".
    """
    now = now or services.clock.now()
    results = []
    for candidate in await _expired(services, now):
        view = {"session_id": candidate.session_id, "recording_id": candidate.recording_id,
                "target": candidate.target, "ended_at": candidate.ended_at.isoformat(),
                "retention_days": candidate.retention_days}
        if dry_run:
            results.append({**view, "action": "would shred"})
            continue
        state = await _shred(services, candidate, now)
        if state is None:
            continue
        await services.audit.emit(RecordingShredded(
            actor=actor, source="local", target=candidate.target, session_id=candidate.session_id,
            recording_id=candidate.recording_id, ended_at=candidate.ended_at.isoformat(),
            retention_days=candidate.retention_days, file=state))
        log.info("recording %s of session %s crypto-shredded (retention %d days)", candidate.recording_id,
                 candidate.session_id, candidate.retention_days)
        results.append({**view, "action": "shredded", "file": state})
    return results


async def _expired(services: Any, now: dt.datetime) -> list[_Candidate]:
    default_days: int = services.config["recording.retention_days"]
    async with asyncio.timeout(DB_TIMEOUT):
        async with services.db() as db:
            shortest = (await db.execute(select(func.min(Target.retention_days))
                                         .where(Target.retention_days > 0))).scalar_one_or_none()
            positive = [days for days in (default_days, shortest) if days]
            if not positive:
                return []  # everything is kept forever
            # Narrow in SQL by the shortest retention anywhere; the exact rule is applied below.
            cutoff = now - dt.timedelta(days=min(positive))
            rows = (await db.execute(
                select(Recording.id, Recording.session_id, Recording.path, Recording.closed_at, Session.ended_at,
                       Session.target_name, Session.node, Target.retention_days)
                .join(Session, Session.id == Recording.session_id)
                .outerjoin(Target, Target.name == Session.target_name)
                .where(Recording.shredded_at.is_(None), Recording.status != "open", Session.legal_hold.is_(False),
                       or_(Session.ended_at < cutoff,
                           and_(Session.ended_at.is_(None), Recording.closed_at < cutoff)))
                .order_by(Recording.created_at)
            )).all()
    candidates = []
    for recording_id, session_id, path, closed_at, ended_at, target, node, target_days in rows:
        days = default_days if target_days is None else target_days
        ended = ended_at or closed_at
        if not days or ended is None or ended + dt.timedelta(days=days) > now:
            continue
        candidates.append(_Candidate(recording_id, session_id, path, target, node, ended, days))
    return candidates


async def _shred(services: Any, candidate: _Candidate, now: dt.datetime) -> str | None:
    """Destroy one recording; return "destroyed" or "missing", or None when it was not this run's to shred."""
    path = Path(candidate.path)
    if candidate.node != services.config.node_name and not await asyncio.to_thread(os.path.lexists, path):
        # Recordings may live on another node's disk: only the node that wrote a file may call it gone.
        log.info("recording %s is not on this node's storage; left to node %s", candidate.recording_id,
                 candidate.node)
        return None
    try:
        async with asyncio.timeout(DB_TIMEOUT + IO_TIMEOUT):
            async with services.db() as db, db.begin():
                # Claim the row first: this takes SQLite's write lock (or PostgreSQL's row lock), so
                # two runs never shred one recording twice...
                claimed = await db.execute(
                    update(Recording).where(Recording.id == candidate.recording_id, Recording.shredded_at.is_(None))
                    .values(status="shredded", shredded_at=now))
                if claimed.rowcount != 1:
                    return None
                # ...and a legal hold committed meanwhile is seen (FOR UPDATE waits for it on PostgreSQL).
                held = (await db.execute(select(Session.legal_hold).where(Session.id == candidate.session_id)
                                         .with_for_update())).scalar_one()
                if held:
                    raise _Held()
                state = await asyncio.to_thread(destroy_recording_file, path)
                # The row first: it takes the lock an indexing run finishing now would need, so no fresh
                # entries can land after the delete.
                await db.execute(update(Session).where(Session.id == candidate.session_id).values(index_key=None))
                await db.execute(delete(SearchEntry).where(SearchEntry.session_id == candidate.session_id))
    except _Held:
        return None
    return state


def destroy_recording_file(path: Path) -> str:
    """Overwrite the wrapped data key in place, fsync, then unlink the file and its sidecars.

    Returns "destroyed", or "missing" when the file was already gone.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        _remove_sidecars(path)
        return "missing"
    try:
        start, end = _wrapped_key_span(fd)
        view = memoryview(b"\0" * (end - start))
        offset = start
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    _remove_sidecars(path)
    fsync_dir(path.parent, missing_ok=True)
    return "destroyed"


def _wrapped_key_span(fd: int) -> tuple[int, int]:
    """Byte range of the wrapped key in the preamble; the whole preamble region if it does not parse."""
    head_size = len(container.MAGIC) + 4
    head = os.pread(fd, head_size + container.MAX_PREAMBLE_JSON, 0)
    fallback = (0, len(head))  # a damaged preamble: whatever key bytes it holds are in here
    if len(head) < head_size or head[:len(container.MAGIC)] != container.MAGIC:
        return fallback
    (length,) = struct.unpack_from(">I", head, len(container.MAGIC))
    body = head[head_size:head_size + length]
    field = body.find(_WRAPPED_KEY_FIELD)
    if field < 0:
        return fallback
    start = field + len(_WRAPPED_KEY_FIELD)
    end = body.find(b'"', start)
    if end < 0:
        return fallback
    return head_size + start, head_size + end


def _remove_sidecars(path: Path) -> None:
    for suffix in SIDECAR_SUFFIXES:
        try:
            os.unlink(path.with_suffix(suffix))
        except FileNotFoundError:
            pass




async def set_legal_hold(services: Any, session_id: str, hold: bool, actor: str) -> dict[str, Any]:
    """Put a session on legal hold (its recording is never shredded) or release it; audited with before/after."""
    session_id = session_id[:64]
    async with asyncio.timeout(DB_TIMEOUT):
        async with services.db() as db, db.begin():
            row = (await db.execute(select(Session).where(Session.id == session_id).with_for_update())
                   ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no session {session_id}")
            shredded = (await db.execute(select(Recording.shredded_at).where(Recording.session_id == session_id))
                        ).scalar_one_or_none()
            if hold and shredded is not None:
                raise Conflict(f"the recording of session {session_id} was crypto-shredded on "
                               f"{shredded.isoformat()}; there is nothing left to hold")
            before = bool(row.legal_hold)
            row.legal_hold = bool(hold)
    if before != bool(hold):
        await services.audit.emit(AdminChange(
            actor=actor, source="local", target=row.target_name, session_id=session_id,
            action="session.legal_hold", object=session_id,
            before={"legal_hold": before}, after={"legal_hold": bool(hold)}))
    return {"session_id": session_id, "legal_hold": bool(hold), "changed": before != bool(hold)}


async def retention_loop(services: Any, interval: float = DEFAULT_INTERVAL) -> None:
    """Apply retention now and then every `interval` seconds, until cancelled (the gateway's periodic task)."""
    while True:
        try:
            async with asyncio.timeout(max(interval, 600.0)):
                done = await apply_retention(services)
            if done:
                log.info("retention: %d recording(s) crypto-shredded", len(done))
        except Exception as exc:  # a bad run must not end the loop; CancelledError still ends it
            log.error("retention run failed: %s", getattr(exc, "safe_message", type(exc).__name__))
        await asyncio.sleep(interval)
