"""Console sessions: a random cookie token, its hash in the database, idle and absolute expiry."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.clock import Clock
from bastion.store.models import WebSession

COOKIE = "__Host-bastion"
ABSOLUTE_LIFETIME = dt.timedelta(hours=12)
LOGIN_LIFETIME = dt.timedelta(minutes=5)   # a login stuck half-way is forgotten soon


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass
class ConsoleSession:
    """What a request knows about its console session (a copy of the row)."""

    id: str
    user_id: int
    authenticated: bool
    methods: list[str]
    required_level: int
    csrf_token: str
    device_id: int | None
    device_proof: str
    source_addr: str
    challenge: dict | None
    expires_at: dt.datetime


def _view(row: WebSession) -> ConsoleSession:
    return ConsoleSession(row.id, row.user_id, bool(row.authenticated), list(row.methods or []), row.required_level,
                          row.csrf_token, row.device_id, row.device_proof, row.source_addr, row.challenge,
                          row.expires_at)


class SessionStore:
    """Creates, finds, rotates and ends console sessions."""

    def __init__(self, sessionmaker: async_sessionmaker, clock: Clock, settings: Mapping[str, Any]):
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._settings = settings  # read at use: the global policy may change while we run

    @property
    def idle_timeout(self) -> dt.timedelta:
        return dt.timedelta(minutes=self._settings["console.idle_timeout"])

    async def create(self, user_id: int, methods: list[str], required_level: int, authenticated: bool,
                     source_addr: str, device_id: int | None = None, device_proof: str = "") -> tuple[str, ConsoleSession]:
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        row = WebSession(id=token_hash(token), user_id=user_id, authenticated=authenticated, methods=methods,
                         required_level=required_level, csrf_token=secrets.token_urlsafe(32), device_id=device_id,
                         device_proof=device_proof, source_addr=source_addr[:64], challenge=None, created_at=now,
                         last_seen_at=now, expires_at=now + (ABSOLUTE_LIFETIME if authenticated else LOGIN_LIFETIME))
        async with self._sessionmaker() as db, db.begin():
            db.add(row)
        return token, _view(row)

    async def find(self, token: str | None) -> ConsoleSession | None:
        """The live session for a cookie token; expired or idle sessions are removed and give None."""
        if not token or len(token) > 200:
            return None
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            row = await db.get(WebSession, token_hash(token))
            if row is None:
                return None
            if row.expires_at <= now or now - row.last_seen_at > self.idle_timeout:
                await db.delete(row)
                return None
            # Touch at most every few seconds: one write per click, not per asset.
            if (now - row.last_seen_at).total_seconds() > 5:
                row.last_seen_at = now
            return _view(row)

    async def rotate(self, old: ConsoleSession, *, methods: list[str], authenticated: bool,
                     required_level: int | None = None, device_id: int | None = None,
                     device_proof: str | None = None) -> tuple[str, ConsoleSession]:
        """A new token (and CSRF token) at login and at every step-up; the old one stops working."""
        async with self._sessionmaker() as db, db.begin():
            await db.execute(delete(WebSession).where(WebSession.id == old.id))
        return await self.create(old.user_id, methods, required_level or old.required_level, authenticated,
                                 old.source_addr, device_id if device_id is not None else old.device_id,
                                 device_proof if device_proof is not None else old.device_proof)

    async def set_challenge(self, session: ConsoleSession, challenge: dict | None) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(WebSession).where(WebSession.id == session.id).values(challenge=challenge))

    async def set_required_level(self, session: ConsoleSession, level: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(WebSession).where(WebSession.id == session.id).values(required_level=level))

    async def end(self, session: ConsoleSession) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(delete(WebSession).where(WebSession.id == session.id))

    async def end_all_for(self, user_id: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(delete(WebSession).where(WebSession.user_id == user_id))

    async def purge_expired(self) -> None:
        now = self._clock.now()
        async with self._sessionmaker() as db, db.begin():
            await db.execute(delete(WebSession).where(WebSession.expires_at <= now))

    async def exists(self, session_id: str) -> bool:
        async with self._sessionmaker() as db:
            return (await db.execute(select(WebSession.id).where(WebSession.id == session_id))).first() is not None
