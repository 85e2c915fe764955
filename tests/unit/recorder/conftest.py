"""Recorder fixtures: a real vault, node key and migrated SQLite database in a temporary data dir."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bastion.clock import Clock
from bastion.config import Config, load_config
from bastion.keys import create_node_key, load_node_key
from bastion.recorder.sealer_client import SealerProcess
from bastion.recorder.sink import SessionRecorder
from bastion.recorder.store import RecordingStore
from bastion.store.engine import make_engine, make_sessionmaker
from bastion.store.migrate import upgrade
from bastion.store.models import Recording, Session
from bastion.vault import Vault, create_master_key

NODE = "node-test"
START = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


@dataclass
class RecorderEnv:
    data_dir: Path
    config: Config
    vault: Vault
    node_key: Ed25519PrivateKey
    engine: AsyncEngine
    db: async_sessionmaker
    clock: Clock
    failures: list[str] = field(default_factory=list)
    stores: list[RecordingStore] = field(default_factory=list)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.node_key.public_key()

    def store(self, *, clock: Clock | None = None, executor: Any = None, node: str = NODE, sealed: bool = False,
              keys_dir: Path | None = None, **settings: Any) -> RecordingStore:
        """A RecordingStore over this data dir; `settings` as Config.replace (recording__chunk_bytes=...).

        sealed: chunks are sealed by a real sealer process (as in the gateway), not by worker threads.
        """
        config = self.config.replace(node_name=node, **settings)
        sealer = SealerProcess(keys_dir or config.keys_dir, lambda: config["recording.flush_interval"]) \
            if sealed else None
        store = RecordingStore(config, self.vault, self.node_key, self.db, clock or self.clock, executor=executor,
                               sealer=sealer)
        self.stores.append(store)
        return store

    async def add_session(self, node: str = NODE) -> str:
        session_id = str(uuid.uuid4())
        async with self.db() as db, db.begin():
            db.add(Session(id=session_id, connection_id=str(uuid.uuid4()), user_name="alice", target_name="web01",
                           account_login="root", kind="shell", source_addr="127.0.0.1", node=node,
                           started_at=dt.datetime.now(dt.timezone.utc)))
        return session_id

    async def open(self, store: RecordingStore | None = None, *, session_id: str | None = None,
                   echo_tracking: bool = False, **kwargs: Any) -> SessionRecorder:
        store = store or self.store()
        session_id = session_id or await self.add_session()
        options = dict(width=80, height=24, term="xterm-256color", title="alice \u2192 root@web01",
                       echo_tracking=echo_tracking, on_failure=self.failures.append)
        options.update(kwargs)
        return await store.open(session_id, **options)

    async def row(self, recording_id: str) -> Recording:
        async with self.db() as db:
            return (await db.execute(select(Recording).where(Recording.id == recording_id))).scalar_one()


@pytest.fixture
async def env(tmp_path: Path):
    keys_dir = tmp_path / "keys"
    create_master_key(keys_dir)
    create_node_key(keys_dir)
    config = load_config(tmp_path, environ={}).replace(node_name=NODE)
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}")
    await upgrade(engine)
    environment = RecorderEnv(tmp_path, config, Vault.load(keys_dir), load_node_key(keys_dir), engine,
                              make_sessionmaker(engine), Clock())
    yield environment
    for store in environment.stores:
        await store.stop()
        store.shutdown()
    await engine.dispose()


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until `condition` holds; the timeout only guards against a hang, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the hang guard expired")
        await asyncio.sleep(0.01)
