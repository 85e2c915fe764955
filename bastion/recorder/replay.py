"""Play asciicast v2 lines to a terminal stream at recorded speed, with long idle gaps shortened."""

from __future__ import annotations

import json
import time
from typing import BinaryIO, Callable, Iterable

from bastion.errors import RecordingError


def replay(lines: Iterable[str], out: BinaryIO, speed: float = 1.0, idle_limit: float | None = 2.0,
           sleep: Callable[[float], object] = time.sleep) -> None:
    """Write the "o" events of `lines` (header first) to the binary stream `out`.

    Each gap between outputs is capped at `idle_limit` recorded seconds (None: no cap), then
    divided by `speed`.
    """
    if not speed > 0:
        raise RecordingError("replay speed must be a positive number")
    if idle_limit is not None and not idle_limit > 0:
        raise RecordingError("idle limit must be a positive number of seconds")
    iterator = iter(lines)
    try:
        header = json.loads(next(iterator))
    except StopIteration:
        raise RecordingError("recording is empty: no asciicast header") from None
    except (json.JSONDecodeError, TypeError):
        raise RecordingError("recording does not start with an asciicast header") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise RecordingError("only asciicast v2 recordings can be replayed")
    previous = 0.0
    for number, line in enumerate(iterator, start=2):
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            when, code, data = json.loads(line)
            when = float(when)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise RecordingError(f"recording line {number} is not an asciicast event") from None
        if code != "o" or not isinstance(data, str):
            continue
        gap = max(0.0, when - previous)
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        if gap > 0:
            sleep(gap / speed)
        out.write(data.encode("utf-8", "replace"))
        out.flush()
        previous = when
