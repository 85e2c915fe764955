"""One-time browser approvals that raise an SSH login's level: expire quickly, used once, bound to a login."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.clock import Clock
from bastion.store.models import Approval

POLL_SECONDS = 0.5


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class PendingApproval:
    id: str
    user_id: int
    connection_id: str
    target: str
    level: int
    expires_at: dt.datetime


class Approvals:
    """Create (SSH side), approve (console side after WebAuthn with user verification), consume (SSH side)."""

    def __init__(self, sessionmaker: async_sessionmaker, clock: Clock, settings: Mapping[str, Any]):
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._settings = settings  # read at use: the global policy may change while we run

    @property
    def lifetime(self) -> dt.timedelta:
        return dt.timedelta(seconds=self._settings["console.approval_seconds"])

    async def create(self, user_id: int, connection_id: str, target: str, level: int) -> str:
        token = secrets.token_urlsafe(24)
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            db.add(Approval(id=_hash(token), user_id=user_id, connection_id=connection_id, target=target[:64],
                            level=level, status="pending", created_at=now, expires_at=now + self.lifetime))
        return token

    async def pending(self, token: str, user_id: int) -> PendingApproval | None:
        """The approval behind a link (its token, or its id from the user's own list), if still pending and
        this user's. Either only identifies it: approving needs that user's console login and security key."""
        if not token or len(token) > 100:
            return None
        async with self._sessionmaker() as db:
            row = await db.get(Approval, _hash(token)) or await db.get(Approval, token)
        if row is None or row.user_id != user_id or row.status != "pending" or row.expires_at <= self._clock.now():
            return None
        return PendingApproval(row.id, row.user_id, row.connection_id, row.target, row.level, row.expires_at)

    async def approve(self, approval_id: str, user_id: int, method: str) -> bool:
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(update(Approval).where(
                Approval.id == approval_id, Approval.user_id == user_id, Approval.status == "pending",
                Approval.expires_at > self._clock.now()).values(status="approved", method=method))
            return result.rowcount == 1

    async def consume(self, token: str, connection_id: str) -> str | None:
        """The approving method once, for the login it was made for; None if not (or no longer) approved."""
        async with self._sessionmaker() as db, db.begin():
            row = await db.get(Approval, _hash(token))
            if row is None or row.connection_id != connection_id or row.status != "approved" \
                    or row.expires_at <= self._clock.now():
                return None
            result = await db.execute(update(Approval).where(Approval.id == row.id, Approval.status == "approved")
                                      .values(status="used"))
            return row.method if result.rowcount == 1 else None

    async def pending_for(self, user_id: int) -> list[PendingApproval]:
        async with self._sessionmaker() as db:
            rows = (await db.execute(select(Approval).where(Approval.user_id == user_id, Approval.status == "pending",
                                                            Approval.expires_at > self._clock.now())
                                     .order_by(Approval.created_at))).scalars().all()
        return [PendingApproval(r.id, r.user_id, r.connection_id, r.target, r.level, r.expires_at) for r in rows]

    async def wait(self, token: str, connection_id: str, timeout: float) -> str | None:
        """Poll until approved (then consume), expired or `timeout`; works across nodes via the database."""
        deadline = self._clock.monotonic() + timeout
        while self._clock.monotonic() < deadline:
            method = await self.consume(token, connection_id)
            if method is not None:
                return method
            async with self._sessionmaker() as db:
                status = (await db.execute(select(Approval.status).where(Approval.id == _hash(token)))).scalar()
            if status not in ("pending", "approved"):
                return None
            await asyncio.sleep(POLL_SECONDS)
        return None
