"""Unit fixtures: a migrated database of each backend with a vault, an audit log and an Admin."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from bastion.admin import Admin
from bastion.audit.log import AuditLog
from bastion.clock import FixedClock
from bastion.store.engine import make_engine, make_sessionmaker
from bastion.store.migrate import upgrade
from bastion.vault import Vault, create_master_key

START = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


@dataclass
class Store:
    engine: object
    db: object
    vault: Vault
    audit: AuditLog
    clock: FixedClock
    admin: Admin


@pytest.fixture
async def store(database_url, tmp_path):
    engine = make_engine(database_url)
    await upgrade(engine)
    create_master_key(tmp_path)
    clock = FixedClock(START)
    db = make_sessionmaker(engine)
    audit = AuditLog(db, "node-test", clock)
    vault = Vault.load(tmp_path)
    yield Store(engine, db, vault, audit, clock, Admin(db, vault, audit, clock, actor="tester"))
    await engine.dispose()
