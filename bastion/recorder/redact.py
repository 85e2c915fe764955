"""Echo tracking: typed text is recorded only when the target echoes it back, else as "<hidden>"."""

from __future__ import annotations

import re
from dataclasses import dataclass

HIDDEN = "<hidden>"

# Input splits into control segments (escape sequences and C0/DEL bytes, recorded as they are:
# they carry no secret and show what the user did) and runs of printable text (which might be
# a password and so must be proven echoed).  ESC + one printable byte covers Alt+key.
_INPUT_SEGMENTS = re.compile(
    rb"(?P<ctrl>(?:\x1b\[[0-?]*[ -/]*[@-~]?|\x1bO.?|\x1b[ -~]?|[\x00-\x1a\x1c-\x1f\x7f])+)"
    rb"|(?P<text>[^\x00-\x1f\x7f]+)", re.DOTALL)

# What an echo looks like once colours, cursor moves, titles and other controls are removed.
# Newlines stay: an echo never follows a newline the target printed after the input was sent,
# so text after one (a banner, an error message) cannot "prove" a hidden password was echoed.
_OUTPUT_NOISE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    rb"|\x1b[ -/]*[0-~]|[\x00-\x09\x0b-\x1f\x7f]")

# How much pending input is worth tracking; beyond this the oldest is hidden at once, so a
# huge paste cannot grow memory or the output scan without bound.
MAX_PENDING_BYTES = 64 * 1024
MAX_PENDING_ITEMS = 4096
_SCAN_SLACK = 4096


@dataclass
class _Pending:
    time: float
    data: bytes
    is_text: bool
    matched: int = 0  # bytes of `data` already seen echoed (an echo may span outputs)
    verdict: str = ""  # "" pending, "echoed" or "hidden"


class EchoTracker:
    """Holds input back until output shows whether the target echoed it.

    `input` and `output` return the input events now decided, oldest first, as
    (time, payload) where payload is the raw bytes or HIDDEN.  Order is kept: an
    event is released only when everything typed before it is decided.
    """

    def __init__(self, echo_window: float):
        self._window = echo_window
        self._queue: list[_Pending] = []
        self._pending_bytes = 0

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def input(self, now: float, data: bytes) -> list[tuple[float, bytes | str]]:
        for match in _INPUT_SEGMENTS.finditer(data):
            text = match.group("text")
            segment = text if text is not None else match.group("ctrl")
            self._queue.append(_Pending(now, segment, is_text=text is not None,
                                        verdict="" if text is not None else "echoed"))
            self._pending_bytes += len(segment)
        while self._pending_bytes > MAX_PENDING_BYTES or len(self._queue) > MAX_PENDING_ITEMS:
            oldest = next((item for item in self._queue if not item.verdict), None)
            if oldest is None:
                break
            oldest.verdict = "hidden"
            self._pending_bytes -= len(oldest.data)
            oldest.data = b""
        return self._release()

    def output(self, now: float, data: bytes) -> list[tuple[float, bytes | str]]:
        """Decide pending input against output the target just sent (call before recording it)."""
        self._expire(now)
        undecided = [item for item in self._queue if not item.verdict]
        if not undecided:
            return self._release()
        # Only the start of the output can be an echo; scan just enough of it.
        want = sum(len(item.data) - item.matched for item in undecided)
        seen = _OUTPUT_NOISE.sub(b"", bytes(data[:4 * want + _SCAN_SLACK]))
        for position, item in enumerate(undecided):
            if not seen:
                break
            remaining = item.data[item.matched:]
            if seen.startswith(remaining):
                item.verdict = "echoed"
                seen = seen[len(remaining):]
            elif remaining.startswith(seen):
                item.matched += len(seen)
                seen = b""
            else:
                # Not echoed in order: this and everything typed after it (before this output)
                # stays unproven; hiding all of it keeps a password's tail from matching by luck.
                for later in undecided[position:]:
                    later.verdict = "hidden"
                break
        return self._release()

    def expire(self, now: float) -> list[tuple[float, bytes | str]]:
        """Hide text whose echo window has passed (the flush timer calls this)."""
        self._expire(now)
        return self._release()

    def finish(self) -> list[tuple[float, bytes | str]]:
        """At the end of a session nothing more can be echoed: hide whatever is undecided."""
        for item in self._queue:
            if not item.verdict:
                item.verdict = "hidden"
        return self._release()

    def _expire(self, now: float) -> None:
        for item in self._queue:
            if not item.verdict and now - item.time >= self._window:
                item.verdict = "hidden"

    def _release(self) -> list[tuple[float, bytes | str]]:
        released: list[tuple[float, bytes | str]] = []
        count = 0
        for item in self._queue:
            if not item.verdict:
                break
            count += 1
            self._pending_bytes -= len(item.data)
            released.append((item.time, item.data if item.verdict == "echoed" else HIDDEN))
        if count:
            del self._queue[:count]
        return released
