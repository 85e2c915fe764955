"""Live sessions: start and end rows, recordings, termination, and re-checks against grants."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import RecordingFailure, SessionEnd, SessionStart
from bastion.admin import DATASETS_LOGIN
from bastion.audit.log import AuditLog
from bastion.auth.identity import Identity
from bastion.clock import Clock
from bastion.errors import RecordingError
from bastion.policy import ChannelAuthorization, Policy, require_minted
from bastion.store.models import Session

log = logging.getLogger("bastion.sessions")
KILL_POLL_SECONDS = 1.0  # a kill requested on another node ends the session within this, plus a moment


@dataclass
class LiveSession:
    """One recorded channel: to a target (shell, exec, sftp or forward), or the `datasets` login's SFTP."""

    id: str
    connection_id: str
    # What lets it run: the channel's authorization, or None on the `datasets` login, where every file is
    # authorized on its own as it is opened (bastion.publish.access) and the session only shows and ends them.
    authorization: ChannelAuthorization | None
    identity: Identity
    target: str
    kind: str
    command: str
    started: float
    recorder: object
    terminate_cb: Callable[[str], None]
    bytes_up: int = 0
    bytes_down: int = 0
    exit_status: int | None = None
    ended: bool = False
    end_reason: str = ""
    width: int = 80
    height: int = 24
    watchers: set = field(default_factory=set)
    seen_bytes: int = 0  # bytes moved at the last re-check, and when that count last changed (idle timeout)
    active_at: float | None = None

    def broadcast(self, kind: str, data: bytes | str) -> None:
        """Hand an event to live viewers; a viewer that cannot keep up is dropped, never waited for."""
        for watcher in list(self.watchers):
            try:
                watcher.put_nowait((kind, data))
            except asyncio.QueueFull:
                self.watchers.discard(watcher)
                watcher.put_nowait_overflow()

    @property
    def user(self) -> str:
        return self.identity.name

    def terminate(self, reason: str) -> None:
        """Ask the front-end to end the session now, telling the user `reason`."""
        if not self.ended:
            self.end_reason = self.end_reason or reason
            self.terminate_cb(reason)


@dataclass
class SessionRegistry:
    """Creates, tracks and ends live sessions on this node."""

    sessionmaker: async_sessionmaker
    audit: AuditLog
    policy: Policy
    recordings: object  # bastion.recorder.store.RecordingStore
    clock: Clock
    node: str
    settings: Mapping[str, Any]  # the global policy, read at use (re-check interval, idle timeout)
    _live: dict[str, LiveSession] = field(default_factory=dict)
    _recheck_task: asyncio.Task | None = None
    _kill_task: asyncio.Task | None = None
    _tasks: set = field(default_factory=set)
    _ending: set = field(default_factory=set)
    # Work to do once a session has ended (keyframes, search index); each gets the session id.
    after_end: list = field(default_factory=list)

    def live(self) -> list[LiveSession]:
        return list(self._live.values())

    def busy(self) -> bool:
        """Sessions are running or still being closed (recording sealed, row written)."""
        return bool(self._live) or bool(self._ending)

    def get(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    async def begin(self, authorization: ChannelAuthorization, *, kind: str, command: str, connection_id: str,
                    width: int, height: int, term: str, echo_tracking: bool,
                    terminate_cb: Callable[[str], None]) -> LiveSession:
        """Insert the session row, open its recording (fail closed) and audit the start."""
        require_minted(authorization)
        target_auth = authorization.target_authorization
        return await self._open(authorization, target_auth.identity, target_auth.target.name, target_auth.account.login,
                                target_auth.grant_ids[0], kind=kind, command=command, connection_id=connection_id,
                                width=width, height=height, term=term, echo_tracking=echo_tracking,
                                terminate_cb=terminate_cb)

    async def begin_datasets(self, identity: Identity, *, connection_id: str,
                             terminate_cb: Callable[[str], None]) -> LiveSession:
        """The same for an SFTP session on the `datasets` login: listed, killable, recorded (a marker per file)."""
        return await self._open(None, identity, DATASETS_LOGIN, "", None, kind="sftp", command="",
                                connection_id=connection_id, width=80, height=24, term="", echo_tracking=False,
                                terminate_cb=terminate_cb)

    async def _open(self, authorization: ChannelAuthorization | None, identity: Identity, target: str, account: str,
                    grant_id: int | None, *, kind: str, command: str, connection_id: str, width: int, height: int,
                    term: str, echo_tracking: bool, terminate_cb: Callable[[str], None]) -> LiveSession:
        session_id = str(uuid.uuid4())
        now = self.clock.now()
        async with self.sessionmaker() as db, db.begin():
            db.add(Session(id=session_id, connection_id=connection_id, user_name=identity.name,
                           target_name=target, account_login=account,
                           kind=kind, command=command[:4096], source_addr=identity.source_addr,
                           source_port=identity.source_port, node=self.node, level=identity.level,
                           methods=list(identity.methods), grant_id=grant_id,
                           device_id=identity.device_id, device_proof=identity.device_proof, started_at=now))
        holder: dict[str, LiveSession] = {}

        def recording_failed(reason: str) -> None:
            live = holder.get("live")
            if live is not None:
                # End the session first and synchronously: the audit write below may fail on the same
                # full disk, and the session must not go on unrecorded in any case.
                live.terminate(f"recording failed ({reason}); the session cannot continue unrecorded")
                self._spawn(self._recording_failed(live, reason))

        title = f"{identity.name} \u2192 {account}@{target}" if account else f"{identity.name} \u2192 {target}"
        try:
            recorder = await self.recordings.open(session_id, width=width, height=height, term=term, title=title,
                                                  echo_tracking=echo_tracking, on_failure=recording_failed)
        except RecordingError as exc:
            await self.audit.emit(RecordingFailure(actor=identity.name, source=identity.source_addr,
                                                   target=target, session_id=session_id,
                                                   reason=exc.safe_message))
            await self._close_row(session_id, "recording unavailable", None, 0, 0)
            raise
        live = LiveSession(session_id, connection_id, authorization, identity, target, kind, command,
                           self.clock.monotonic(), recorder, terminate_cb, width=width, height=height)
        holder["live"] = live
        self._live[session_id] = live
        try:
            await self.audit.emit(SessionStart(actor=identity.name, source=identity.source_addr,
                                               target=target, session_id=session_id, kind=kind,
                                               account=account, command=command[:1024],
                                               level=identity.level, methods=identity.methods,
                                               connection_id=connection_id, grant_id=grant_id,
                                               device=str(identity.device_id or ""),
                                               device_proof=identity.device_proof))
        except Exception:
            # Not audited, so not run: nothing of it may stay live (a row open forever, a recording unsealed).
            self._live.pop(session_id, None)
            live.ended = True
            for step in (recorder.close("session start could not be audited"),
                         self._close_row(session_id, "session start could not be audited", None, 0, 0)):
                try:
                    await step
                except Exception:
                    log.exception("undoing the start of session %s failed", session_id)
            raise
        return live

    async def _recording_failed(self, live: LiveSession, reason: str) -> None:
        try:
            await self.audit.emit(RecordingFailure(actor=live.user, target=live.target, session_id=live.id,
                                                   reason=reason))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not audit the recording failure of session %s", live.id)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def end(self, live: LiveSession, reason: str) -> None:
        """Close the recording, the row and audit the end; idempotent."""
        if live.ended:
            return
        live.ended = True
        reason = live.end_reason or reason
        self._live.pop(live.id, None)
        self._ending.add(live.id)
        try:
            await self._close(live, reason)
        finally:
            self._ending.discard(live.id)

    async def _close(self, live: LiveSession, reason: str) -> None:
        try:
            await live.recorder.close(reason)
        except asyncio.CancelledError:
            raise
        except Exception:  # the recording already reported its failure; the row must still close
            log.exception("closing recording of session %s failed", live.id)
        await self._close_row(live.id, reason, live.exit_status, live.bytes_up, live.bytes_down)
        await self.audit.emit(SessionEnd(actor=live.user, source=live.identity.source_addr, target=live.target,
                                         session_id=live.id, reason=reason, bytes_up=live.bytes_up,
                                         bytes_down=live.bytes_down, exit_status=live.exit_status,
                                         duration=round(self.clock.monotonic() - live.started, 3)))
        for hook in self.after_end:
            self._spawn(self._after(hook, live.id))

    async def _after(self, hook, session_id: str) -> None:
        try:
            await hook(session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("post-session work for %s failed", session_id)

    async def _close_row(self, session_id: str, reason: str, exit_status: int | None, up: int, down: int) -> None:
        async with self.sessionmaker() as db, db.begin():
            await db.execute(update(Session).where(Session.id == session_id).values(
                ended_at=self.clock.now(), end_reason=reason[:64], exit_status=exit_status, bytes_up=up,
                bytes_down=down))

    async def request_kill(self, session_id: str, reason: str) -> bool:
        """End a session on whichever node runs it: at once here, within a poll interval elsewhere."""
        async with self.sessionmaker() as db, db.begin():
            result = await db.execute(update(Session).where(Session.id == session_id, Session.ended_at.is_(None))
                                      .values(kill_requested_at=self.clock.now(), kill_reason=reason[:256]))
            if result.rowcount == 0:
                return False
        live = self._live.get(session_id)
        if live is not None:
            live.terminate(reason)
        return True

    async def _kill_requested(self) -> None:
        if not self._live:
            return
        async with self.sessionmaker() as db:
            rows = (await db.execute(select(Session.id, Session.kill_reason).where(
                Session.id.in_(list(self._live)), Session.kill_requested_at.is_not(None)))).all()
        for session_id, reason in rows:
            live = self._live.get(session_id)
            if live is not None:
                live.terminate(reason or "terminated by an auditor")

    async def _kill_loop(self) -> None:
        while True:
            await asyncio.sleep(KILL_POLL_SECONDS)
            try:
                await self._kill_requested()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling kill requests failed")

    def start_rechecks(self) -> None:
        if self._recheck_task is None:
            loop = asyncio.get_running_loop()
            self._recheck_task = loop.create_task(self._recheck_loop())
            self._kill_task = loop.create_task(self._kill_loop())

    async def stop(self) -> None:
        for task in (self._recheck_task, self._kill_task):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
        self._recheck_task = self._kill_task = None

    async def recheck_now(self) -> int:
        """End live sessions whose grant was revoked or expired, whose user was disabled, whose level no
        longer satisfies the policy, or that have been idle longer than `session.idle_timeout`."""
        ended = 0
        now = self.clock.now()
        idle_limit = self.settings["session.idle_timeout"] * 60
        decisions: dict = {}  # one decision per identity, target and account in this pass
        for live in self.live():
            if self._idle_for(live) > idle_limit > 0:
                live.terminate(f"idle for more than {self.settings['session.idle_timeout']:g} minutes")
                ended += 1
                continue
            try:
                if live.authorization is None:
                    still = await self.policy.recheck_datasets_login(live.identity)
                else:
                    still = await self.policy.recheck(live.authorization, now, decisions)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("re-check of session %s failed; ending it (fail closed)", live.id)
                still = False
            if not still:
                live.terminate("access revoked or expired")
                ended += 1
        return ended

    def _idle_for(self, live: LiveSession) -> float:
        """Seconds since the session last moved a byte, as seen by the re-checks (no work on the byte path)."""
        moved, now = live.bytes_up + live.bytes_down, self.clock.monotonic()
        if moved != live.seen_bytes:
            live.seen_bytes, live.active_at = moved, now
        return now - (live.started if live.active_at is None else live.active_at)

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings["policy.recheck_interval"])
            await self.recheck_now()
