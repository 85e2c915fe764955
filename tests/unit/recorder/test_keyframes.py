"""Keyframes: replay from any time gives the same screen as a full replay, and tampering is refused."""

from __future__ import annotations

import json

import pyte
import pytest

from bastion.clock import FixedClock
from bastion.recorder import keyframes
from bastion.recorder.reader import iter_lines
from tests.unit.recorder.conftest import START


def final_screen(lines) -> list[str]:
    lines = list(lines)
    header = json.loads(lines[0])
    screen = pyte.Screen(header["width"], header["height"])
    stream = pyte.Stream(screen)
    for line in lines[1:]:
        _, code, data = json.loads(line)
        if code == "o":
            stream.feed(data)
        elif code == "r":
            width, height = (int(v) for v in data.split("x"))
            screen.resize(height, width)
    return screen.display + [f"cursor {screen.cursor.x},{screen.cursor.y}"]


async def record_long_session(env, seconds: int = 200):
    clock = FixedClock(START)
    recorder = await env.open(env.store(clock=clock, recording__flush_interval=0.05))
    for second in range(seconds):
        clock.advance(1.0)
        recorder.output(f"\x1b[3{second % 8}mline {second:04d}\x1b[0m {'x' * (second % 50)}\r\n".encode())
        if second == 77:
            recorder.resize(100, 30)
        if second % 40 == 0:
            recorder.output(b"\x1b[2J\x1b[Hcleared\r\n")
    await recorder.close("exited")
    return recorder.path


async def test_replay_from_any_keyframe_ends_on_the_same_screen(env):
    path = await record_long_session(env)
    frames = keyframes.build(path, env.vault, interval=30.0)
    assert [round(k.time) for k in frames] == [30, 60, 90, 120, 150, 180]
    keyframes.save(path, env.vault, frames)
    assert keyframes.sidecar(path).stat().st_mode & 0o077 == 0
    assert b"line 0" not in keyframes.sidecar(path).read_bytes()  # encrypted
    full = final_screen(iter_lines(path, env.vault, env.public_key))
    for start in (0.0, 45.0, 95.0, 199.0, 10_000.0):
        lines = list(keyframes.lines_from(path, env.vault, env.public_key, start))
        header = json.loads(lines[0])
        assert header["bastion_offset"] <= start
        assert final_screen(lines) == full, start
    late = list(keyframes.lines_from(path, env.vault, env.public_key, 199.0))
    assert len(late) < 40  # a jump near the end reads a snapshot and a few events, not the session


async def test_without_or_with_damaged_keyframes_replay_falls_back_to_the_start(env):
    path = await record_long_session(env, 60)
    assert json.loads(next(keyframes.lines_from(path, env.vault, env.public_key, 50.0)))["bastion_offset"] == 0.0
    keyframes.save(path, env.vault, keyframes.build(path, env.vault, 30.0))
    blob = bytearray(keyframes.sidecar(path).read_bytes())
    blob[-1] ^= 1
    keyframes.sidecar(path).write_bytes(bytes(blob))
    assert keyframes.load(path, env.vault) == []
    assert json.loads(next(keyframes.lines_from(path, env.vault, env.public_key, 50.0)))["bastion_offset"] == 0.0


def test_render_keeps_text_colour_and_cursor():
    screen = pyte.Screen(20, 3)
    pyte.Stream(screen).feed("\x1b[31mred\x1b[0m plain\r\n\x1b[1mbold")
    again = pyte.Screen(20, 3)
    pyte.Stream(again).feed(keyframes.render(screen))
    assert again.display == screen.display
    assert (again.cursor.x, again.cursor.y) == (screen.cursor.x, screen.cursor.y)
    assert again.buffer[0][0].fg == "red" and again.buffer[1][0].bold
