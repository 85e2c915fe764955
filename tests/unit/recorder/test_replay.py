"""Replay writes the output events at recorded speed, idle gaps capped, to a binary stream."""

from __future__ import annotations

import io
import json

import pytest

from bastion.errors import RecordingError
from bastion.recorder.reader import iter_lines
from bastion.recorder.replay import replay

HEADER = json.dumps({"version": 2, "width": 80, "height": 24})


def cast(*events) -> list[str]:
    return [HEADER] + [json.dumps(list(e), ensure_ascii=False) for e in events]


def test_delays_follow_the_recording_divided_by_speed_with_idle_capped():
    out, sleeps = io.BytesIO(), []
    replay(cast([0.5, "o", "a"], [0.7, "i", "typed"], [1.0, "o", "b\u00e9"], [31.0, "o", "c"], [31.0, "m", "x"],
                [31.25, "r", "100x30"], [32.0, "o", "d"]),
           out, speed=2.0, idle_limit=2.0, sleep=sleeps.append)
    assert out.getvalue() == "ab\u00e9cd".encode()
    assert sleeps == [0.25, 0.25, 1.0, 0.5]


def test_no_idle_limit_keeps_long_gaps():
    sleeps = []
    replay(cast([0.0, "o", "a"], [100.0, "o", "b"]), io.BytesIO(), idle_limit=None, sleep=sleeps.append)
    assert sleeps == [100.0]


@pytest.mark.parametrize("lines, words", [
    ([], "empty"),
    (["not json"], "header"),
    ([json.dumps({"version": 1})], "v2"),
    ([HEADER, "[1.0, \"o\""], "line 2"),
])
def test_bad_input_is_a_clear_error(lines, words):
    with pytest.raises(RecordingError, match=words):
        replay(lines, io.BytesIO(), sleep=lambda s: None)


@pytest.mark.parametrize("speed, idle", [(0, 2.0), (-1, 2.0), (1.0, 0), (float("nan"), 2.0)])
def test_bad_settings_are_refused(speed, idle):
    with pytest.raises(RecordingError):
        replay(cast([0.0, "o", "a"]), io.BytesIO(), speed=speed, idle_limit=idle, sleep=lambda s: None)


async def test_replays_a_real_recording(env):
    rec = await env.open()
    rec.output(b"first\r\n")
    rec.output("second \u2713\r\n".encode())
    await rec.close("done")
    out = io.BytesIO()
    replay(iter_lines(rec.path, env.vault, env.public_key), out, speed=1000, sleep=lambda s: None)
    assert out.getvalue() == "first\r\nsecond \u2713\r\n".encode()
