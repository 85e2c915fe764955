"""Account lockout: wrong secrets in a row lock the account; only wrong secrets count."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.clock import Clock
from bastion.store.models import User


class Lockout:
    """Counts wrong secrets per user in the database, so every node sees the same count."""

    def __init__(self, sessionmaker: async_sessionmaker, clock: Clock, settings: Mapping[str, Any]):
        self._sessionmaker = sessionmaker
        self._clock = clock
        self._settings = settings  # read at use: the global policy may change while we run

    @property
    def threshold(self) -> int:
        return self._settings["auth.lockout_threshold"]

    @property
    def duration(self) -> dt.timedelta:
        return dt.timedelta(minutes=self._settings["auth.lockout_minutes"])

    def is_locked(self, locked_until: dt.datetime | None) -> bool:
        return locked_until is not None and locked_until > self._clock.now()

    async def wrong_secret(self, user_id: int | None) -> bool:
        """Count a wrong secret; True when this one locked the account.

        An unknown user (None) costs the same single UPDATE, so timing does not tell the two apart.
        """
        threshold = self.threshold
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(update(User).where(User.id == (user_id if user_id is not None else -1))
                                      .values(failed_count=User.failed_count + 1)
                                      .returning(User.failed_count))
            count = result.scalar_one_or_none()
            if count is not None and count >= threshold:
                await db.execute(update(User).where(User.id == user_id)
                                 .values(locked_until=self._clock.now() + self.duration, failed_count=0))
                return True
        return False

    async def succeeded(self, user_id: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(User).where(User.id == user_id, User.failed_count != 0).values(failed_count=0))

    async def unlock(self, user_id: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(User).where(User.id == user_id).values(failed_count=0, locked_until=None))
