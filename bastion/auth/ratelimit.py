"""Per-source-address limit on failed, unauthenticated attempts (sliding window, in memory)."""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

MAX_SOURCES = 100_000


class SourceRateLimit:
    """A source address with `limit` failures inside `window` seconds is refused until they age out."""

    def __init__(self, settings: Mapping[str, Any], monotonic: Callable[[], float]):
        self._settings = settings  # read at use: the global policy may change while we run
        self._now = monotonic
        self._failures: dict[str, collections.deque[float]] = {}

    @property
    def limit(self) -> int:
        return self._settings["auth.rate_limit_failures"]

    @property
    def window(self) -> float:
        return self._settings["auth.rate_limit_window"]

    def _recent(self, source: str) -> collections.deque[float]:
        stamps = self._failures.get(source)
        if stamps is None:
            return collections.deque()
        cutoff = self._now() - self.window
        while stamps and stamps[0] <= cutoff:
            stamps.popleft()
        if not stamps:
            del self._failures[source]
        return stamps

    def allowed(self, source: str) -> bool:
        return len(self._recent(source)) < self.limit

    def failure(self, source: str) -> None:
        if source not in self._failures and len(self._failures) >= MAX_SOURCES:
            self._evict()
        stamps = self._failures.setdefault(source, collections.deque())
        stamps.append(self._now())
        while len(stamps) > self.limit:  # bounded even if the limit was lowered meanwhile
            stamps.popleft()

    def _evict(self) -> None:
        # Bounded memory under a spray of sources: drop the ones whose newest failure is oldest.
        oldest = sorted(self._failures, key=lambda s: self._failures[s][-1] if self._failures[s] else 0)
        for source in oldest[: len(oldest) // 10 or 1]:
            del self._failures[source]
