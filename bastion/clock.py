"""Time as a component, so tests can move it."""

from __future__ import annotations

import datetime as dt
import time


class Clock:
    """Wall-clock UTC time and a monotonic counter."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


class FixedClock(Clock):
    """A clock that moves only when told (tests)."""

    def __init__(self, start: dt.datetime):
        self._now = start
        self._mono = 0.0

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds
