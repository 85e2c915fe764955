"""Per-source rate limit and account lockout."""

import datetime as dt

from sqlalchemy import select

from bastion.auth.lockout import Lockout
from bastion.auth.ratelimit import SourceRateLimit
from bastion.clock import FixedClock
from bastion.store.models import User

LIMITS = {"auth.rate_limit_failures": 3, "auth.rate_limit_window": 60}


def test_rate_limit_counts_failures_per_source_in_a_window():
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    limit = SourceRateLimit(LIMITS, clock.monotonic)
    for _ in range(3):
        assert limit.allowed("10.0.0.1")
        limit.failure("10.0.0.1")
    assert not limit.allowed("10.0.0.1")
    assert limit.allowed("10.0.0.2")
    clock.advance(61)
    assert limit.allowed("10.0.0.1")


def test_rate_limit_memory_is_bounded(monkeypatch):
    import bastion.auth.ratelimit as module

    monkeypatch.setattr(module, "MAX_SOURCES", 100)
    limit = SourceRateLimit(LIMITS, lambda: 0.0)
    for index in range(1000):
        limit.failure(f"10.0.{index // 250}.{index % 250}")
    assert len(limit._failures) <= 100


async def test_lockout_after_threshold_then_unlock(store):
    await store.admin.add_user("alice", password="a-long-enough-password")
    lockout = Lockout(store.db, store.clock, {"auth.lockout_threshold": 3, "auth.lockout_minutes": 30})
    async with store.db() as db:
        alice = (await db.execute(select(User).where(User.name == "alice"))).scalar_one()
    assert [await lockout.wrong_secret(alice.id) for _ in range(3)] == [False, False, True]
    async with store.db() as db:
        alice = await db.get(User, alice.id)
    assert lockout.is_locked(alice.locked_until)
    store.clock.advance(31 * 60)
    assert not lockout.is_locked(alice.locked_until)
    assert await lockout.wrong_secret(None) is False  # unknown users cost the same and lock nothing
    await lockout.unlock(alice.id)
    async with store.db() as db:
        alice = await db.get(User, alice.id)
    assert alice.locked_until is None and alice.failed_count == 0


def test_rate_limit_follows_a_changed_limit_without_a_restart():
    settings = dict(LIMITS)
    limit = SourceRateLimit(settings, lambda: 0.0)
    for _ in range(3):
        limit.failure("10.0.0.1")
    assert not limit.allowed("10.0.0.1")
    settings["auth.rate_limit_failures"] = 5
    assert limit.allowed("10.0.0.1")
    for _ in range(10):
        limit.failure("10.0.0.1")
    assert not limit.allowed("10.0.0.1")
    assert len(limit._failures["10.0.0.1"]) == 5  # still bounded by the limit in force
    settings["auth.rate_limit_failures"] = 2
    limit.failure("10.0.0.1")
    assert len(limit._failures["10.0.0.1"]) == 2


async def test_lockout_follows_a_changed_threshold_without_a_restart(store):
    await store.admin.add_user("alice", password="a-long-enough-password")
    settings = {"auth.lockout_threshold": 5, "auth.lockout_minutes": 30}
    lockout = Lockout(store.db, store.clock, settings)
    async with store.db() as db:
        alice = (await db.execute(select(User).where(User.name == "alice"))).scalar_one()
    assert [await lockout.wrong_secret(alice.id) for _ in range(2)] == [False, False]
    settings["auth.lockout_threshold"], settings["auth.lockout_minutes"] = 3, 1
    assert await lockout.wrong_secret(alice.id) is True
    async with store.db() as db:
        alice = await db.get(User, alice.id)
    assert lockout.is_locked(alice.locked_until)
    store.clock.advance(61)
    assert not lockout.is_locked(alice.locked_until)
