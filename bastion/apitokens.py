"""Scoped, expiring API tokens for automation; only a hash of each token is stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import AdminChange
from bastion.audit.log import AuditLog
from bastion.clock import Clock
from bastion.errors import Conflict, NotFound, UsageError
from bastion.store.models import ApiToken, User

PREFIX = "bst_"
SCOPES = ("me", "audit:read", "audit:write", "admin:read", "admin:write")
# A scope is only usable by a user who holds the role behind it.
SCOPE_ROLES = {"me": None, "audit:read": "auditor", "audit:write": "auditor", "admin:read": "admin",
               "admin:write": "admin"}
MAX_TTL = dt.timedelta(days=365)
_TTL = re.compile(r"^(\d{1,6})([smhd])$")


def parse_ttl(text: str) -> dt.timedelta:
    """`30m`, `12h`, `90d` ...; at most a year."""
    match = _TTL.fullmatch((text or "").strip())
    if not match:
        raise UsageError("--ttl must look like 30m, 12h or 90d")
    amount, unit = int(match.group(1)), match.group(2)
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    ttl = dt.timedelta(**{units[unit]: amount})
    if ttl <= dt.timedelta(0) or ttl > MAX_TTL:
        raise UsageError("--ttl must be more than 0 and at most 365d")
    return ttl


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenHolder:
    token_id: int
    user_id: int
    user_name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    scopes: frozenset[str]


class ApiTokens:
    """Issue, check and revoke tokens."""

    def __init__(self, sessionmaker: async_sessionmaker, audit: AuditLog, clock: Clock):
        self._sessionmaker = sessionmaker
        self._audit = audit
        self._clock = clock

    async def create(self, user_name: str, scopes: list[str], ttl: dt.timedelta, actor: str,
                     label: str = "") -> tuple[str, dict[str, Any]]:
        scopes = sorted(set(scopes))
        if not scopes:
            raise UsageError("a token needs at least one scope")
        for scope in scopes:
            if scope not in SCOPES:
                raise UsageError(f"unknown scope {scope[:30]!r}: use {', '.join(SCOPES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            user = (await db.execute(select(User).where(User.name == user_name))).scalar_one_or_none()
            if user is None:
                raise NotFound(f"no such user: {user_name[:64]}")
            for scope in scopes:
                role = SCOPE_ROLES[scope]
                if role is not None and role not in (user.roles or []):
                    raise Conflict(f"{user_name} does not hold the {role} role that scope {scope} needs")
            row = ApiToken(token_hash=_hash(token), user_id=user.id, scopes=scopes, label=label[:128],
                           created_at=now, expires_at=now + ttl)
            db.add(row)
            await db.flush()
            info = {"id": row.id, "user": user_name, "scopes": scopes, "expires_at": row.expires_at.isoformat(),
                    "label": row.label}
        await self._audit.emit(AdminChange(actor=actor, source="local", target=f"token:{info['id']}",
                                           action="token.create", object=f"token:{info['id']}", after=info))
        return token, info

    async def holder(self, token: str) -> TokenHolder | None:
        """Who a presented token belongs to, or None for unknown, expired, revoked or disabled."""
        if not token.startswith(PREFIX) or len(token) > 100:
            return None
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            row = (await db.execute(select(ApiToken).where(ApiToken.token_hash == _hash(token)))).scalar_one_or_none()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None
            user = await db.get(User, row.user_id)
            if user is None or user.status != "active":
                return None
            if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
                row.last_used_at = now
            # Roles are checked on every use: a token outlives nothing the user has lost.
            scopes = frozenset(s for s in row.scopes if SCOPE_ROLES.get(s) is None or SCOPE_ROLES[s] in user.roles)
            return TokenHolder(row.id, user.id, user.name, tuple(user.roles), tuple(user.groups or ()), scopes)

    async def revoke(self, token_id: int, actor: str) -> None:
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                                      .values(revoked_at=self._clock.now()))
            if result.rowcount == 0:
                raise NotFound(f"no active token {token_id}")
        await self._audit.emit(AdminChange(actor=actor, source="local", target=f"token:{token_id}",
                                           action="token.revoke", object=f"token:{token_id}",
                                           before={"state": "active"}, after={"state": "revoked"}))

    async def list(self) -> list[dict[str, Any]]:
        now = self._clock.now()
        async with self._sessionmaker() as db:
            rows = (await db.execute(select(ApiToken, User.name).join(User, ApiToken.user_id == User.id)
                                     .order_by(ApiToken.id))).all()
        return [{"id": t.id, "user": name, "scopes": list(t.scopes), "label": t.label,
                 "expires_at": t.expires_at.isoformat(),
                 "state": "revoked" if t.revoked_at else "expired" if t.expires_at <= now else "active",
                 "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None} for t, name in rows]
