"""The session registry: a session that cannot be fully started leaves nothing live behind."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bastion.admin import DATASETS_LOGIN
from bastion.audit.events import SessionStart
from bastion.auth.identity import Identity
from bastion.sessions.registry import SessionRegistry
from bastion.store.models import Recording, Session

from tests.unit.recorder.conftest import NODE


class _AuditThatFailsAtStart:
    """The audit log as a full or locked database leaves it: every session.start write fails."""

    def __init__(self) -> None:
        self.events: list = []

    async def emit(self, event) -> None:
        if isinstance(event, SessionStart):
            raise OSError("database is locked")
        self.events.append(event)


async def test_a_session_whose_start_cannot_be_audited_is_undone(env):
    registry = SessionRegistry(env.db, _AuditThatFailsAtStart(), policy=None, recordings=env.store(),
                               clock=env.clock, node=NODE, settings={"session.idle_timeout": 0})
    identity = Identity(1, "alice", ("user",), (), 1, ("publickey",), "127.0.0.1")
    with pytest.raises(OSError):
        await registry.begin_datasets(identity, connection_id="c1", terminate_cb=lambda reason: None)
    assert registry.live() == [] and not registry.busy()
    async with env.db() as db:
        [session] = (await db.execute(select(Session))).scalars().all()
        [recording] = (await db.execute(select(Recording))).scalars().all()
    assert (session.target_name, session.kind) == (DATASETS_LOGIN, "sftp")
    assert session.ended_at is not None and session.end_reason == "session start could not be audited"
    assert recording.session_id == session.id and recording.status == "sealed"
