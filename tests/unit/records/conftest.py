"""Records fixtures: a real data directory (keys, config, migrated database of each backend) and its Services."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from bastion.clock import FixedClock
from bastion.config import load_config
from bastion.datadir import init_data_dir
from bastion.services import Services
from bastion.store.models import Recording, SearchEntry, Session, Target

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
async def services(database_url, tmp_path):
    data_dir = tmp_path / "data"
    await init_data_dir(data_dir, listen="127.0.0.1:0", database_url=database_url)
    opened = await Services.open(load_config(data_dir, environ={}), clock=FixedClock(NOW))
    yield opened
    await opened.close()


async def add_target(services, name: str, retention_days: int | None = None) -> None:
    async with services.db() as db, db.begin():
        db.add(Target(name=name, host="127.0.0.1", port=22, host_keys="", labels={}, retention_days=retention_days,
                      created_at=NOW))


async def recorded_session(services, *, target: str = "web01", ended_days_ago: float | None = 40,
                           text: bytes = b"hello from the target\r\n", search: bool = True) -> tuple[str, Path]:
    """A session with a real, sealed recording (and search entries); returns (session id, recording path)."""
    session_id = str(uuid.uuid4())
    ended = None if ended_days_ago is None else NOW - dt.timedelta(days=ended_days_ago)
    async with services.db() as db, db.begin():
        db.add(Session(id=session_id, connection_id=str(uuid.uuid4()), user_name="alice", target_name=target,
                       account_login="root", kind="shell", source_addr="127.0.0.1", node=services.config.node_name,
                       started_at=(ended or NOW) - dt.timedelta(minutes=5), ended_at=ended,
                       index_key=b"wrapped-index-key" if search else None))
    recorder = await services.recordings.open(session_id, width=80, height=24, term="xterm", title="alice -> web01",
                                              echo_tracking=False, on_failure=lambda reason: None)
    recorder.output(text)
    await recorder.close("exit")
    if search:
        async with services.db() as db, db.begin():
            db.add_all([SearchEntry(session_id=session_id, kind="command", offset=1.5, sealed=b"\x00sealed-1"),
                        SearchEntry(session_id=session_id, kind="output", offset=2.0, sealed=b"\x01sealed-2")])
    return session_id, recorder.path


async def recording_row(services, session_id: str) -> Recording:
    async with services.db() as db:
        return (await db.execute(select(Recording).where(Recording.session_id == session_id))).scalar_one()


async def session_row(services, session_id: str) -> Session:
    async with services.db() as db:
        return (await db.execute(select(Session).where(Session.id == session_id))).scalar_one()
