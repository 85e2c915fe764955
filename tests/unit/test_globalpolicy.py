"""Global policy changed at runtime: validated like bastion.toml, stored, applied live, audited, fail closed."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bastion.config import load_config
from bastion.errors import ConfigError, Conflict, NotFound
from bastion.globalpolicy import EDITABLE, SECTION, GlobalPolicy
from bastion.store.models import AuditEvent, PolicySetting

# Values no editable setting accepts: wrong type, out of range, not a number, control characters, too long.
GARBAGE = ["", "nan", "inf", "-1", "1e999", "\x00", "3;rm -rf /", "x" * 65, [1], {"a": 1}, None, True]
NOT_EDITABLE = ["listen", "database_url", "recording.dir", "publish.blob_dir", "ssh.window", "", "../etc",
                "auth.default_min_level\x00", "AUTH.DEFAULT_MIN_LEVEL", "x" * 200]


def make_policy(store, tmp_path, environ=None):
    config = load_config(tmp_path / "data", environ=environ or {})
    return GlobalPolicy(config, store.db, store.audit, store.clock)


async def rows(store) -> dict[str, str]:
    async with store.db() as db:
        return {r.name: r.value for r in (await db.execute(select(PolicySetting))).scalars()}


async def policy_events(store) -> list[AuditEvent]:
    async with store.db() as db:
        return list((await db.execute(select(AuditEvent).where(AuditEvent.type.startswith("admin.policy"))
                                      .order_by(AuditEvent.seq))).scalars())


async def test_a_change_applies_to_the_live_config_at_once_and_is_audited_before_and_after(store, tmp_path):
    policy = make_policy(store, tmp_path, {"BASTION_AUTH_LOCKOUT_THRESHOLD": "7"})
    await policy.load()
    config = policy.config
    assert config["auth.lockout_threshold"] == 7 and policy.get("auth.lockout_threshold").origin == "file"
    assert policy.get("auth.lockout_minutes").origin == "default"
    changed = await policy.set("auth.lockout_threshold", "3", "adam", "10.0.0.9")
    assert config["auth.lockout_threshold"] == 3  # the very object components hold
    assert (changed.value, changed.origin, changed.file_value, changed.updated_by) == (3, "console", 7, "adam")
    events = await policy_events(store)
    assert [(e.type, e.actor, e.source, e.target) for e in events] == [
        ("admin.policy.set", "adam", "10.0.0.9", "auth.lockout_threshold")]
    assert events[0].details["before"] == {"value": 7, "origin": "file"}
    assert events[0].details["after"] == {"value": 3, "origin": "console"}
    reset = await policy.reset("auth.lockout_threshold", "adam", "10.0.0.9")
    assert config["auth.lockout_threshold"] == 7 and (reset.value, reset.origin) == (7, "file")
    events = await policy_events(store)
    assert events[-1].type == "admin.policy.reset"
    assert events[-1].details == {"action": "policy.reset", "object": "auth.lockout_threshold",
                                  "before": {"value": 3, "origin": "console"}, "after": {"value": 7, "origin": "file"}}
    assert await rows(store) == {}
    with pytest.raises(Conflict):  # nothing left to reset: said so, and not audited again
        await policy.reset("auth.lockout_threshold", "adam", "10.0.0.9")
    assert len(await policy_events(store)) == 2


async def test_a_stored_change_survives_a_restart_and_reaches_other_processes(store, tmp_path):
    first, second = make_policy(store, tmp_path), make_policy(store, tmp_path)
    await first.load()
    await second.load()
    await first.set("console.idle_timeout", 5, "adam", "local")
    assert second.config["console.idle_timeout"] == 15.0  # until it refreshes
    await second.refresh()
    assert second.config["console.idle_timeout"] == 5.0
    assert second.get("console.idle_timeout").updated_by == "adam"
    restarted = make_policy(store, tmp_path)
    await restarted.load()
    assert restarted.config["console.idle_timeout"] == 5.0
    await first.reset("console.idle_timeout", "adam", "local")
    await second.refresh()
    assert second.config["console.idle_timeout"] == 15.0 and second.get("console.idle_timeout").origin == "default"


@pytest.mark.parametrize("name", [name for names in EDITABLE.values() for name in names])
async def test_garbage_values_are_refused_with_the_reason_and_change_nothing(store, tmp_path, name):
    policy = make_policy(store, tmp_path)
    await policy.load()
    before = policy.config[name]
    for raw in GARBAGE:
        if name == "auth.device_policy" and raw in ("off", "advisory", "required"):
            continue
        with pytest.raises(ConfigError) as caught:
            await policy.set(name, raw, "adam", "local")
        assert caught.value.safe_message.startswith(f"config error: {name}:"), raw
    assert policy.config[name] == before
    assert await rows(store) == {} and await policy_events(store) == []


async def test_settings_that_are_not_editable_are_unknown_here(store, tmp_path):
    policy = make_policy(store, tmp_path)
    await policy.load()
    before = dict(policy.config.values)
    for name in NOT_EDITABLE:
        assert name not in SECTION
        with pytest.raises(NotFound):
            await policy.set(name, "1", "adam", "local")
        with pytest.raises(NotFound):
            await policy.reset(name, "adam", "local")
    assert dict(policy.config.values) == before
    assert await rows(store) == {} and await policy_events(store) == []


async def test_a_stored_value_that_no_longer_validates_stops_the_start(store, tmp_path):
    async with store.db() as db, db.begin():
        db.add(PolicySetting(name="auth.default_min_level", value="7", updated_by="db", updated_at=store.clock.now()))
    policy = make_policy(store, tmp_path)
    with pytest.raises(ConfigError) as caught:
        await policy.load()
    assert "auth.default_min_level" in caught.value.safe_message
    # the way out, without loading first (what `bastion policy reset` does)
    await make_policy(store, tmp_path).reset("auth.default_min_level", "cli:root", "local")
    await policy.load()
    assert policy.config["auth.default_min_level"] == 1


async def test_a_bad_row_met_at_refresh_keeps_the_value_in_force(store, tmp_path):
    policy = make_policy(store, tmp_path)
    await policy.load()
    await policy.set("auth.default_min_level", 2, "adam", "local")
    async with store.db() as db, db.begin():
        (await db.get(PolicySetting, "auth.default_min_level")).value = "not json{"
    await policy.refresh()
    assert policy.config["auth.default_min_level"] == 2  # not the weaker file value


async def test_rows_for_settings_that_are_not_editable_are_ignored(store, tmp_path):
    async with store.db() as db, db.begin():
        db.add(PolicySetting(name="database_url", value=json.dumps("postgresql://evil/"), updated_by="db",
                             updated_at=store.clock.now()))
    policy = make_policy(store, tmp_path)
    await policy.load()
    await policy.refresh()
    assert policy.config["database_url"] == ""


async def test_every_editable_setting_is_a_real_setting_read_through_the_config(tmp_path):
    config = load_config(tmp_path, environ={})
    for names in EDITABLE.values():
        for name in names:
            assert name in config.values
