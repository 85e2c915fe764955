"""Auditor operations on recordings and the audit log: export, verify, replay, list (each read audited)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from bastion.audit.events import AuditRead, RecordingRead
from bastion.errors import NotFound
from bastion.keys import load_node_key
from bastion.recorder import keyframes
from bastion.recorder.export import export_cast
from bastion.recorder.reader import verify
from bastion.recorder.replay import replay
from bastion.store.models import AuditEvent, Recording


async def _recording(services: Any, session_id: str) -> Recording:
    async with services.db() as db:
        row = (await db.execute(select(Recording).where(Recording.session_id == session_id[:64]))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no recording for session {session_id[:64]}")
    return row


async def _audit_read(services: Any, actor: str, session_id: str, purpose: str) -> None:
    await services.audit.emit(RecordingRead(actor=actor, source="local", session_id=session_id, purpose=purpose))


def _public_key(services: Any) -> Any:
    return load_node_key(services.config.keys_dir).public_key()


async def export_session(services: Any, session_id: str, out: Path, force: bool, actor: str) -> str:
    row = await _recording(services, session_id)
    await _audit_read(services, actor, row.session_id, "export")
    result = await asyncio.to_thread(export_cast, Path(row.path), out, services.vault, _public_key(services),
                                     force=force)
    return f"exported session {row.session_id} to {out}" + (f" ({result})" if isinstance(result, str) else "")


async def verify_sessions(services: Any, session_id: str | None, actor: str) -> list[dict[str, Any]]:
    if session_id is not None:
        rows = [await _recording(services, session_id)]
    else:
        async with services.db() as db:
            rows = list((await db.execute(select(Recording).order_by(Recording.created_at))).scalars())
    public = _public_key(services)
    out = []
    for row in rows:
        await _audit_read(services, actor, row.session_id, "verify")
        report = await asyncio.to_thread(verify, Path(row.path), public)
        view = dataclasses.asdict(report)
        view["session_id"] = row.session_id
        out.append(view)
    return out


async def replay_session(services: Any, session_id: str, speed: float, out: BinaryIO, actor: str,
                         start: float = 0.0) -> None:
    row = await _recording(services, session_id)
    await _audit_read(services, actor, row.session_id, "replay")
    lines = keyframes.lines_from(Path(row.path), services.vault, _public_key(services), start)
    await asyncio.to_thread(replay, lines, out, speed=speed)


KEYFRAME_JOB_TIMEOUT = 3600.0


async def build_keyframes(services: Any, session_id: str) -> int:
    """Seek points for a finished session's replay, built by a separate lowest-priority process once
    live sessions are not moving bulk data (services.quiet)."""
    await services.quiet.wait()
    row = await _recording(services, session_id)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bastion.recorder.keyframes_job", str(services.config.keys_dir), row.path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with services.quiet.pausing(process.pid):  # stopped while live sessions move bulk data
            out, _ = await asyncio.wait_for(process.communicate(), KEYFRAME_JOB_TIMEOUT)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        raise
    return int(out.strip() or b"0") if process.returncode == 0 else 0


async def list_audit(services: Any, type_prefix: str | None, limit: int, actor: str, source: str = "local",
                     purpose: str = "list") -> list[dict[str, Any]]:
    """The newest audit events (optionally of one type prefix); the read itself is audited first."""
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(max(1, min(limit, 100000)))
    if type_prefix:
        query = query.where(AuditEvent.type.startswith(type_prefix[:64], autoescape=True))
    await services.audit.emit(AuditRead(actor=actor[:128], source=source, purpose=purpose,
                                        query=(type_prefix or "")[:64], rows=limit))
    async with services.db() as db:
        rows = (await db.execute(query)).scalars().all()
    return [{"seq": r.seq, "ts": r.ts.isoformat(), "type": r.type, "actor": r.actor, "source": r.source,
             "target": r.target, "session_id": r.session_id, "outcome": r.outcome, "node": r.node,
             "details": r.details, "hash": r.hash} for r in rows]
