"""Global policy admins change at runtime: stored overrides over bastion.toml, applied live, audited before/after."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import AdminChange
from bastion.audit.log import AuditLog
from bastion.clock import Clock
from bastion.config import SETTINGS, Config, validate
from bastion.errors import ConfigError, Conflict, NotFound
from bastion.store.models import PolicySetting

log = logging.getLogger("bastion.policy")

# The settings an admin may change while the gateway runs, by section. Everything that reads them reads
# them at use, so a change applies to the next decision without a restart. Transport, paths and keys are
# not here: they are fixed at start (bastion.toml / BASTION_*).
EDITABLE: dict[str, tuple[str, ...]] = {
    "levels": ("auth.default_min_level", "console.login_level", "console.admin_level", "console.auditor_level",
               "publish.level_public", "publish.level_internal", "publish.level_confidential",
               "publish.level_secret"),
    "devices": ("auth.device_policy",),
    "lockout": ("auth.lockout_threshold", "auth.lockout_minutes", "auth.rate_limit_failures",
                "auth.rate_limit_window"),
    "timeouts": ("console.idle_timeout", "session.idle_timeout", "console.approval_seconds",
                 "policy.recheck_interval"),
    "recording": ("recording.retention_days", "recording.flush_interval", "recording.echo_window"),
    "publishing": ("publish.rows_per_day", "publish.bytes_per_day", "publish.rows_per_page",
                   "publish.approval_minutes", "publish.download_minutes"),
}
SECTION = {name: section for section, names in EDITABLE.items() for name in names}
HELP = {setting.name: setting.help for setting in SETTINGS}
DEFAULT = {setting.name: setting.default for setting in SETTINGS}
MAX_VALUE_CHARS = 64
REFRESH_SECONDS = 5.0  # how soon a change made by another process (CLI, another node) applies here


@dataclass(frozen=True)
class PolicyValue:
    """One editable setting as shown to an admin: value in force, where it comes from, and the file value."""

    name: str
    section: str
    value: Any
    origin: str  # "default", "file" (bastion.toml or BASTION_*), or "console" (changed at runtime)
    file_value: Any
    help: str
    updated_by: str = ""
    updated_at: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "section": self.section, "value": self.value, "origin": self.origin,
                "file_value": self.file_value, "help": self.help, "updated_by": self.updated_by,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


class GlobalPolicy:
    """Holds the runtime overrides; `config` (from `overlaid`) sees them the moment they change."""

    def __init__(self, base: Config, sessionmaker: async_sessionmaker, audit: AuditLog, clock: Clock):
        self._file = dict(base.values)
        self._overrides: dict[str, Any] = {}
        self._stamps: dict[str, tuple[str, dt.datetime]] = {}
        self.config = base.overlaid(self._overrides)
        self._sessionmaker = sessionmaker
        self._audit = audit
        self._clock = clock

    async def load(self) -> None:
        """Read the stored overrides at start; a stored value that no longer validates stops the start
        (fail closed: falling back to the file value could silently weaken the policy)."""
        await self._read(strict=True)

    async def refresh(self) -> None:
        """Pick up changes made by another process (the CLI, another node); a bad row keeps the old value."""
        await self._read(strict=False)

    async def refresh_loop(self, interval: float = REFRESH_SECONDS) -> None:
        """Refresh forever, so a change made elsewhere applies here within `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.refresh(), timeout=interval * 2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing the global policy failed; keeping the values in force")

    def values(self) -> list[PolicyValue]:
        return [self._view(name) for names in EDITABLE.values() for name in names]

    def get(self, name: str) -> PolicyValue:
        if name not in SECTION:
            raise NotFound(f"{str(name)[:64]!r} is not a global policy setting")
        return self._view(name)

    def parse(self, name: str, raw: Any, source: str = "the console") -> Any:
        """The value `raw` stands for, validated as bastion.toml would be; ConfigError says why not."""
        self.get(name)
        if isinstance(raw, str) and len(raw) > MAX_VALUE_CHARS:
            raise ConfigError(f"config error: {name}: value too long")
        return validate(name, raw, source)

    async def set(self, name: str, raw: Any, actor: str, source: str) -> PolicyValue:
        """Validate `raw` like bastion.toml would, store it, apply it now, and audit before and after."""
        before = self.get(name)
        value = self.parse(name, raw, "the command line" if source == "local" else "the console")
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            row = await db.get(PolicySetting, name)
            if row is None:
                db.add(PolicySetting(name=name, value=json.dumps(value), updated_by=actor[:128], updated_at=now))
            else:
                row.value, row.updated_by, row.updated_at = json.dumps(value), actor[:128], now
        self._overrides[name] = value
        self._stamps[name] = (actor, now)
        after = self._view(name)
        await self._audit.emit(AdminChange(actor=actor, source=source, target=name, action="policy.set", object=name,
                                           before=_audited(before), after=_audited(after)))
        return after

    async def reset(self, name: str, actor: str, source: str) -> PolicyValue:
        """Drop the runtime override: the bastion.toml / BASTION_* value (or the default) applies again."""
        before = self.get(name)
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(delete(PolicySetting).where(PolicySetting.name == name))
        if result.rowcount == 0:
            raise Conflict(f"{name} has no runtime change to reset")
        self._overrides.pop(name, None)
        self._stamps.pop(name, None)
        after = self._view(name)
        await self._audit.emit(AdminChange(actor=actor, source=source, target=name, action="policy.reset",
                                           object=name, before=_audited(before), after=_audited(after)))
        return after

    # --- internals ---------------------------------------------------------------------------------------

    async def _rows(self) -> list[PolicySetting]:
        async with self._sessionmaker() as db:
            return list((await db.execute(select(PolicySetting))).scalars())

    async def _read(self, strict: bool) -> None:
        # Rows of settings a later version no longer lets admins change are ignored: bastion.toml decides.
        rows = [row for row in await self._rows() if row.name in SECTION]
        values = {}
        for row in rows:
            try:
                values[row.name] = self._parse_stored(row)
            except ConfigError as exc:
                if strict:
                    raise
                log.error("%s; keeping the value in force", exc.safe_message)
                if row.name in self._overrides:
                    values[row.name] = self._overrides[row.name]
        self._apply(values, rows)

    @staticmethod
    def _parse_stored(row: PolicySetting) -> Any:
        try:
            raw = json.loads(row.value)
        except ValueError:
            raise ConfigError(f"config error: stored policy setting {row.name}: not valid JSON; "
                              f"reset it with `bastion policy reset {row.name}`") from None
        return validate(row.name, raw, "the stored policy")

    def _apply(self, values: dict[str, Any], rows: list[PolicySetting]) -> None:
        # Mutate in place: the overlaid config holds this very dict.
        for name in list(self._overrides):
            if name not in values:
                del self._overrides[name]
        self._overrides.update(values)
        self._stamps = {row.name: (row.updated_by, row.updated_at) for row in rows if row.name in values}

    def _view(self, name: str) -> PolicyValue:
        file_value = self._file[name]
        if name in self._overrides:
            by, at = self._stamps.get(name, ("", None))
            return PolicyValue(name, SECTION[name], self._overrides[name], "console", file_value, HELP[name], by, at)
        origin = "default" if file_value == DEFAULT[name] else "file"
        return PolicyValue(name, SECTION[name], file_value, origin, file_value, HELP[name])


def _audited(view: PolicyValue) -> dict[str, Any]:
    return {"value": view.value, "origin": view.origin}
