"""The search index: built from ended sessions' recordings in the background; searched in memory, audited."""

# Indexing runs `bastion.search.job` in a separate, niced process (terminal emulation is CPU work),
# one session at a time; the gateway only stores what it prints: the vault-wrapped index key on the
# session row and the sealed entries. Nothing searchable is ever stored in clear.
#
# Searching narrows sessions by their metadata first (user, target, start time; newest first, at
# most MAX_SESSIONS_SCANNED of them), then unwraps each session's key once, decrypts its entries and
# matches in memory: a case-insensitive substring (Unicode case folding) of a command or an output
# line. Exec sessions are matched on their command line (stored with the session). At most MAX_LIMIT
# hits are returned; `SearchOutcome.complete` is False when sessions beyond the scan bound were not
# looked at. Each search is audited (who, filters, how many hits, which sessions), never the text
# searched for, which may itself be a secret.

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import os
import sys
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import delete, exists, insert, or_, select, update

from bastion.audit.events import AdminChange
from bastion.errors import UsageError, VaultError
from bastion.keys import load_node_key
from bastion.search import MAX_LIMIT, MAX_SESSIONS_SCANNED, seal
from bastion.store.models import Recording, SearchEntry, Session

log = logging.getLogger("bastion.search")

INDEXED_KINDS = ("shell", "exec")
JOB_TIMEOUT = 600.0
MAX_JOB_OUTPUT = 32 * 1024 * 1024
MAX_QUEUE = 10_000           # sessions waiting to be indexed; beyond, index_pending catches up
PENDING_BATCH = 200
MAX_PENDING_RUN = 10_000     # sessions one index_pending call looks at
SESSION_BATCH = 20           # sessions whose entries are loaded at once
MAX_QUERY_CHARS = 256


# -- indexing ----------------------------------------------------------------------------------------------


async def index_session(services: Any, session_id: str, *, force: bool = False) -> bool:
    """Index one finished session; True once it is indexed (now or before), False if it cannot be yet.

    Idempotent: an indexed session is left alone unless `force`, which rebuilds its entries under a
    new key. A session whose recording is still open (live, or left by a crash until the next start
    seals it) is not indexed yet; a crashed session whose recording was sealed is, though its row
    never ended. Sessions of other kinds (sftp, forward), without a recording, or crypto-shredded
    get an empty index.
    """
    async with services.db() as db:
        row = await db.get(Session, session_id)
        recording = None if row is None else (await db.execute(
            select(Recording).where(Recording.session_id == session_id))).scalar_one_or_none()
    if row is None:
        return False
    if row.indexed_at is not None and not force:
        return True
    if row.kind not in INDEXED_KINDS or recording is None:
        if row.ended_at is None:
            return False
        return await _store(services, session_id, None, [], force)
    if recording.shredded_at is not None:
        return await _store(services, session_id, None, [], force)
    if recording.status == "open":
        return False  # live, closing right now, or left by a crash until the next start seals it
    if not await asyncio.to_thread(os.path.exists, recording.path):
        if row.node != services.config.node_name:
            return False  # on another node's own disk: that node indexes it
        log.warning("session %s: recording file missing; indexed as empty", session_id)
        return await _store(services, session_id, None, [], force)
    result = await _run_job(services, recording.path, session_id, row.kind)
    if result is None:
        return False
    if result["status"] == "error":
        log.warning("session %s: recording not readable for search now (%s)", session_id,
                    str(result.get("reason", ""))[:200])
        return False
    if result["status"] != "ok":
        log.warning("session %s: recording unreadable for search (%s); indexed as empty", session_id,
                    str(result.get("reason", ""))[:200])
        return await _store(services, session_id, None, [], force)
    if result.get("truncated"):
        log.info("session %s: search index cut at its bounds", session_id)
    return await _store(services, session_id, result["wrapped_key"], result["entries"], force)


async def _run_job(services: Any, path: str, session_id: str, kind: str) -> dict[str, Any] | None:
    keys_dir = services.config.keys_dir
    public = load_node_key(keys_dir).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bastion.search.job", str(keys_dir), str(path), session_id, kind, public,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        # Its errors could quote what it read: never into the gateway's log.
        stderr=asyncio.subprocess.DEVNULL)
    try:
        async with services.quiet.pausing(process.pid):  # stopped while live sessions move bulk data
            out, _ = await asyncio.wait_for(process.communicate(), JOB_TIMEOUT)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.warning("session %s: search indexing took longer than %ds; stopped", session_id, JOB_TIMEOUT)
        return None
    if process.returncode != 0 or len(out) > MAX_JOB_OUTPUT:
        log.warning("session %s: search indexing job failed (exit %s)", session_id, process.returncode)
        return None
    try:
        result = _decode_job(json.loads(out))
    except (ValueError, KeyError, TypeError, binascii.Error):
        log.warning("session %s: search indexing job gave a malformed answer", session_id)
        return None
    return result


def _decode_job(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict) or result.get("status") not in ("ok", "unreadable", "error"):
        raise ValueError("bad answer")
    if result["status"] != "ok":
        return result
    entries = []
    for kind, offset, sealed in result["entries"]:
        if kind not in (seal.COMMAND, seal.OUTPUT) or isinstance(offset, bool) or not isinstance(offset, (int, float)):
            raise ValueError("bad entry")
        entries.append((kind, float(offset), base64.b64decode(sealed, validate=True)))
    return {**result, "wrapped_key": base64.b64decode(result["wrapped_key"], validate=True), "entries": entries}


async def _store(services: Any, session_id: str, wrapped_key: bytes | None,
                 entries: list[tuple[str, float, bytes]], force: bool) -> bool:
    """Replace the session's entries in one transaction; the row update claims the session first."""
    claim = (Session.id == session_id) & ~exists().where(Recording.session_id == session_id,
                                                         Recording.shredded_at.is_not(None))
    if not force:
        claim &= Session.indexed_at.is_(None)
    async with services.db() as db, db.begin():
        # The update locks the row (PostgreSQL) or the database (SQLite): two nodes indexing the same
        # session one after the other leave one set of entries, under the key stored with them.
        claimed = await db.execute(update(Session).where(claim).values(
            indexed_at=services.clock.now(), index_key=wrapped_key if entries else None))
        if claimed.rowcount == 0:
            return True  # indexed meanwhile elsewhere (or shredded: nothing to index)
        await db.execute(delete(SearchEntry).where(SearchEntry.session_id == session_id))
        if entries:
            await db.execute(insert(SearchEntry), [
                {"session_id": session_id, "kind": kind, "offset": offset, "sealed": sealed}
                for kind, offset, sealed in entries])
    return True


async def index_pending(services: Any, *, limit: int = MAX_PENDING_RUN) -> int:
    """Index finished sessions that are not indexed yet (at most `limit` looked at); returns how many were."""
    indexer = _indexer(services)
    done = looked = 0
    after = ""
    while looked < limit:
        async with services.db() as db:
            ids = list((await db.execute(
                select(Session.id).outerjoin(Recording, Recording.session_id == Session.id)
                .where(Session.indexed_at.is_(None), Session.kind.in_(INDEXED_KINDS), Session.id > after,
                       or_(Session.ended_at.is_not(None), Recording.status.not_in(("open",))))
                .order_by(Session.id).limit(min(PENDING_BATCH, limit - looked)))).scalars())
        if not ids:
            break
        for session_id in ids:
            looked += 1
            after = session_id
            if await indexer.index_one(session_id):
                done += 1
    return done


# -- background ---------------------------------------------------------------------------------------------


class _Indexer:
    """Per Services: a bounded queue of sessions to index and one worker draining it, one job at a time."""

    def __init__(self, services: Any):
        self._services = weakref.ref(services)
        self.lock = asyncio.Lock()
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.overflowed = False
        self.task: asyncio.Task | None = None

    @property
    def services(self) -> Any:
        return self._services()

    def add(self, session_id: str) -> None:
        if session_id in self.queued:
            return
        if len(self.queue) >= MAX_QUEUE:
            if not self.overflowed:
                log.warning("search indexing queue full (%d sessions); the rest is caught up later", MAX_QUEUE)
            self.overflowed = True
            return
        self.queue.append(session_id)
        self.queued.add(session_id)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    def catch_up(self) -> None:
        self.overflowed = True
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.queue or self.overflowed:
            if self.queue:
                session_id = self.queue.popleft()
                self.queued.discard(session_id)
                await self.index_one(session_id)
                continue
            self.overflowed = False
            services = self.services
            if services is None:
                return
            try:
                await index_pending(services)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catching up on the search index failed")

    async def index_one(self, session_id: str) -> bool:
        services = self.services
        if services is None:
            return False
        try:
            async with self.lock:
                await services.quiet.wait()  # not while live sessions move bulk data
                return await index_session(services, session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only ciphertext and metadata pass through here; the clear text stays in the job.
            log.exception("search indexing of session %s failed", session_id)
            return False

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise


_INDEXERS: dict[int, _Indexer] = {}


def _indexer(services: Any) -> _Indexer:
    indexer = _INDEXERS.get(id(services))
    if indexer is None or indexer.services is not services:
        indexer = _Indexer(services)
        _INDEXERS[id(services)] = indexer
        weakref.finalize(services, _INDEXERS.pop, id(services), None)
    return indexer


def schedule_indexing(services: Any, session_id: str) -> None:
    """Index `session_id` soon, in the background (needs a running loop); never raises.

    One job runs at a time; at most MAX_QUEUE sessions wait, the rest is caught up by index_pending.
    """
    try:
        _indexer(services).add(str(session_id))
    except Exception:
        log.exception("could not schedule search indexing of session %s", session_id)


async def index_later(services: Any, session_id: str) -> None:
    """schedule_indexing as a coroutine, for `SessionRegistry.after_end` hooks; returns at once."""
    schedule_indexing(services, session_id)


def schedule_pending(services: Any) -> None:
    """Catch up on ended, unindexed sessions in the background (at gateway start); never raises."""
    try:
        _indexer(services).catch_up()
    except Exception:
        log.exception("could not schedule catching up on the search index")


async def stop_indexing(services: Any) -> None:
    """Cancel background indexing (the running job is killed); call before closing the services."""
    indexer = _INDEXERS.get(id(services))
    if indexer is not None and indexer.services is services:
        await indexer.stop()


# -- searching ----------------------------------------------------------------------------------------------


def parse_since(text: str | None) -> dt.datetime | None:
    """An ISO 8601 date or time (`--since`, `since=`); without a zone it is UTC."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError("since must be an ISO 8601 time (2026-01-01 or 2026-01-01T08:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


@dataclass
class SearchOutcome:
    hits: list[dict[str, Any]] = field(default_factory=list)
    sessions_scanned: int = 0
    complete: bool = True       # False: more sessions passed the filters than were scanned
    unreadable: int = 0         # entries that did not open (altered, or another key)


async def search(services: Any, text: str, *, user: str | None = None, target: str | None = None,
                 since: dt.datetime | None = None, limit: int = 50, actor: str,
                 source: str = "local") -> list[dict[str, Any]]:
    """Hits for `text` in commands and output, newest session first; the search is audited as `actor`."""
    outcome = await search_sessions(services, text, user=user, target=target, since=since, limit=limit,
                                    actor=actor, source=source)
    return outcome.hits


async def search_sessions(services: Any, text: str, *, user: str | None = None, target: str | None = None,
                          since: dt.datetime | None = None, limit: int = 50, actor: str,
                          source: str = "local") -> SearchOutcome:
    """`search`, with how much was scanned."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("give some text to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"search text is longer than {MAX_QUERY_CHARS} characters")
    if since is not None and since.tzinfo is None:
        raise UsageError("--since needs a time zone (or use UTC: 2026-01-01T00:00:00Z)")
    limit = max(1, min(int(limit), MAX_LIMIT))
    needle = text.strip().casefold()
    query = (select(Session.id, Session.user_name, Session.target_name, Session.account_login, Session.kind,
                    Session.command, Session.started_at, Session.index_key)
             .where(Session.kind.in_(INDEXED_KINDS))
             .where((Session.kind == "exec") | Session.index_key.is_not(None))
             .order_by(Session.started_at.desc(), Session.id).limit(MAX_SESSIONS_SCANNED + 1))
    if user:
        query = query.where(Session.user_name == user[:64])
    if target:
        query = query.where(Session.target_name == target[:64])
    if since is not None:
        query = query.where(Session.started_at >= since)
    async with services.db() as db:
        sessions = (await db.execute(query)).all()
    outcome = SearchOutcome(complete=len(sessions) <= MAX_SESSIONS_SCANNED)
    sessions = sessions[:MAX_SESSIONS_SCANNED]
    for start in range(0, len(sessions), SESSION_BATCH):
        if len(outcome.hits) >= limit:
            break
        batch = sessions[start:start + SESSION_BATCH]
        outcome.sessions_scanned += len(batch)
        keyed = [s.id for s in batch if s.index_key is not None]
        entries: dict[str, list[Any]] = {}
        if keyed:
            async with services.db() as db:
                rows = await db.execute(
                    select(SearchEntry.session_id, SearchEntry.kind, SearchEntry.offset, SearchEntry.sealed)
                    .where(SearchEntry.session_id.in_(keyed))
                    .order_by(SearchEntry.session_id, SearchEntry.offset, SearchEntry.id))
                for row in rows:
                    entries.setdefault(row.session_id, []).append(row)
        hits, unreadable = await asyncio.to_thread(_match_batch, services.vault, batch, entries, needle,
                                                   limit - len(outcome.hits))
        outcome.hits.extend(hits)
        outcome.unreadable += unreadable
    if outcome.unreadable:
        log.warning("search: %d index entries did not open (altered, or sealed under another key)",
                    outcome.unreadable)
    hit_sessions = sorted({hit["session_id"] for hit in outcome.hits})
    # The hits are session content: audited before anyone sees them (fail closed).
    await services.audit.emit(AdminChange(
        actor=actor[:128], source=source[:64], target=(target or "")[:64], action="search.query", object="sessions",
        after={"user": user or "", "target": target or "", "since": since.isoformat() if since else "",
               "query_chars": len(text), "hits": len(outcome.hits), "sessions": hit_sessions,
               "sessions_scanned": outcome.sessions_scanned, "complete": outcome.complete}))
    return outcome


def _match_batch(vault: Any, sessions: list[Any], entries: dict[str, list[Any]], needle: str,
                 room: int) -> tuple[list[dict[str, Any]], int]:
    """Decrypt and match one batch of sessions (in a worker thread); newest session first."""
    hits: list[dict[str, Any]] = []
    unreadable = 0
    for session in sessions:
        found: list[tuple[float, str, str]] = []
        if session.kind == "exec" and needle in (session.command or "").casefold():
            found.append((0.0, seal.COMMAND, session.command))
        rows = entries.get(session.id, [])
        if rows:
            try:
                key = vault.unwrap_key(session.index_key, seal.wrap_context(session.id))
            except VaultError:
                unreadable += len(rows)
                rows = []
            for row in rows:
                plain = seal.open_sealed(key, session.id, row.kind, row.offset, row.sealed)
                if plain is None:
                    unreadable += 1
                elif row.kind == seal.COMMAND:
                    command = plain.decode("utf-8", "replace")
                    if needle in command.casefold():
                        found.append((row.offset, seal.COMMAND, command))
                else:
                    found.extend((line.offset, seal.OUTPUT, line.text) for line in seal.block_lines(plain)
                                 if needle in line.text.casefold())
        found.sort(key=lambda item: (item[0], item[1]))
        for offset, kind, matched in found:
            if len(hits) >= room:
                return hits, unreadable
            hits.append(_hit(session, kind, offset, matched))
    return hits, unreadable


def _hit(session: Any, kind: str, offset: float, text: str) -> dict[str, Any]:
    return {"session_id": session.id, "user": session.user_name, "target": session.target_name,
            "account": session.account_login, "session_kind": session.kind, "kind": kind,
            "offset": round(offset, 3), "text": text, "started_at": session.started_at.isoformat(),
            "time": (session.started_at + dt.timedelta(seconds=offset)).isoformat(),
            "replay": f"/audit/sessions/{session.id}?t={round(offset, 3)}"}
