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


# Screens left in different states by earlier output: cursor anywhere, colours, insert and new-line
# modes, autowrap off, text everywhere; the plain output after it must leave them alike either way.
PRELUDES = [
    "",
    "\x1b[2J\x1b[5;10Hmiddle\x1b[1;31mred",
    "\x1b[4h" + "\n".join(f"row {i}" for i in range(30)) + "\x1b[3;1H",
    "\x1b[?7l" + "w" * 300 + "\x1b[H\x1b[7mreverse",
    "\x1b[10;1H" + "left\ttabbed\r\n" * 3 + "\x1b[24;70Hcorner",
    "\x1b[24;80Hx",                     # the cursor waits at the right edge (the next character wraps)
    "\x1b[?7l\x1b[24;78Habc",           # ... or stays there, autowrap off
    "\x1b[3g\x1b[1;5H\x1bH\x1b[1;33H\x1bH\x1b[1;79H\x1bH\x1b[H",  # tab stops at 4, 32 and 78 only
    "\x1b[3g",                          # no tab stops at all: a tab goes to the last column
]


def _plain_output(seed: int) -> str:
    """Terminal output (CR LF, some wide characters and tabs) for even seeds; output without a terminal
    (bare LF: base64 and logs for seeds 1 and 5 modulo 6, else text with tabs, wide, combining and
    zero-width characters, which pyte draws by their width) for odd ones."""
    import random

    rng = random.Random(seed)
    if seed % 2 == 0:
        letters, ends = "abcdefghij XYZ\tä日", ["\r\n", "\r\n", "\n", "\r", "\n\r"]
    elif seed % 6 in (1, 5):
        letters, ends = "abcdefghij+/XYZ=", ["\n"]
    else:
        letters, ends = "abcdefgh XYZ\t\tä日本\u0301\u200b\U0001f600", ["\n"]
    pieces = []
    for _ in range(rng.randint(40, 120)):
        text = "".join(rng.choice(letters) for _ in range(rng.choice([0, 5, 70, 76, 79, 80, 81, 160, 200])))
        pieces.append(text + rng.choice(ends))
    if seed % 4 == 3:  # blank lines last: the column the skipped text left is all the end shows of it
        pieces.append("\n" * 60)
    return "".join(pieces)


def _state(screen: pyte.Screen) -> tuple:
    cells = [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)]
    return keyframes.render(screen), cells, screen.cursor.x, screen.cursor.y, screen.cursor.attrs


@pytest.mark.parametrize("prelude", PRELUDES)
def test_plain_output_leaves_the_same_screen_from_its_tail_as_in_full(prelude):
    skipped = 0
    # Generated outputs, and ASCII that ends exactly at, just past and just before the right edge.
    outputs = [_plain_output(seed) for seed in range(24)] + ["a" * n + "\n" * 60 for n in (160, 161, 79)]
    for seed, data in enumerate(outputs):
        full, tail = pyte.Screen(80, 24), pyte.Screen(80, 24)
        for screen in (full, tail):
            pyte.Stream(screen).feed(prelude)
        part = keyframes.skip_plain(data, tail)
        pyte.Stream(full).feed(data)
        pyte.Stream(tail).feed(part)
        assert _state(tail) == _state(full), f"seed {seed}"
        skipped += len(part) < len(data)
    assert skipped >= 16  # most of these outputs are long enough to skip: the check above is not vacuous


@pytest.mark.parametrize("prelude", PRELUDES)
@pytest.mark.parametrize("line", ["x\ty", "日本語", "e\u0301\u0301", "a\u200bb", "\t" * 12, "\U0001f600" * 41,
                                  "tab\tthen 日" * 9], ids=["tab", "wide", "combining", "zero-width", "tabs",
                                                          "emoji-past-edge", "mixed"])
def test_text_without_carriage_returns_is_skipped_and_leaves_the_column_pyte_would(prelude, line):
    data = (line + "\n") * 300
    full, tail = pyte.Screen(80, 24), pyte.Screen(80, 24)
    for screen in (full, tail):
        pyte.Stream(screen).feed(prelude)
    part = keyframes.skip_plain(data, tail)
    assert len(part) < len(data)  # the column is known: most of it is skipped
    pyte.Stream(full).feed(data)
    pyte.Stream(tail).feed(part)
    assert _state(tail) == _state(full)


@pytest.mark.parametrize("prelude, data", [
    ("\x1b[1;71H", "a\n" * 300),                            # the cursor left past the new edge
    ("", "a" * 40 + "\tb\n" + "\n" * 300),                   # a tab to a stop past the new edge
    ("\x1b[1;71H", "\u0301\n" * 300),                       # a combining mark there moves nothing
    ("\x1b[?7l\x1b[1;71H", "日\tx\n" * 300),                # autowrap off, past the edge
], ids=["ascii", "tab-stop", "combining", "no-autowrap"])
def test_a_screen_narrowed_under_the_cursor_is_followed_like_pyte(prelude, data):
    full, tail = pyte.Screen(80, 24), pyte.Screen(80, 24)
    for screen in (full, tail):
        pyte.Stream(screen).feed(prelude)
        screen.resize(24, 40)  # pyte keeps the cursor's column and the tab stops past the new edge
    part = keyframes.skip_plain(data, tail)
    assert len(part) < len(data)
    pyte.Stream(full).feed(data)
    pyte.Stream(tail).feed(part)
    assert _state(tail) == _state(full)


async def test_held_reads_are_emulated_read_by_read_as_without_holding(env, monkeypatch):
    """pyte ends a run at a character with no width: "ab\u200b" then "cd" draws "abcd", joined only "ab"."""
    clock = FixedClock(START)
    recorder = await env.open(env.store(clock=clock, recording__flush_interval=0.05))
    for second in range(70):
        clock.advance(1.0)
        for line in range(40):
            recorder.output(f"{second:02d}:{line:02d} ab\u200b".encode())
            recorder.output(f"cd\u2060ef 日本\t{'x' * (line * 3)}\n".encode())  # no terminal: bare LF
    await recorder.close("exited")
    fast = keyframes.build(recorder.path, env.vault, interval=10.0)
    monkeypatch.setattr(keyframes, "is_plain", lambda data: False)  # nothing held: every read emulated
    slow = keyframes.build(recorder.path, env.vault, interval=10.0)
    assert len(fast) == 7  # at 10, 20, ... 70 s
    assert fast == slow


def test_under_another_character_set_the_column_is_not_guessed():
    screen = pyte.Screen(80, 24)
    stream = pyte.Stream(screen)
    stream.use_utf8 = False  # pyte honours shift-out only outside UTF-8 (replay streams stay in UTF-8)
    stream.feed("\x0e")  # the G1 set (DEC graphics) draws from here on
    assert screen.charset == 1
    data = "x\ty\n" * 300
    assert keyframes.skip_plain(data, screen) == data


@pytest.mark.parametrize("data", [
    "x\r\n" * 100 + "\x1b[31mred\r\n" + "y\r\n" * 100,   # an escape changes modes: all of it counts
    "x\r\n" * 100 + "\x0e" + "y\r\n" * 100,              # shift-out switches the character set
    "x\r\n" * 100 + "\x9b2J" + "y\r\n" * 100,            # an 8-bit CSI
    "x\r\n" * 40,                                       # too few line feeds to scroll everything off
])
def test_output_with_controls_or_too_few_lines_is_emulated_in_full(data):
    assert keyframes.skip_plain(data, pyte.Screen(80, 24)) == data


@pytest.mark.parametrize("mode", ["\x1b[5;20r", "\x1b[20h"], ids=["scroll-region", "new-line-mode"])
def test_a_scroll_region_or_new_line_mode_keeps_the_output_whole(mode):
    screen = pyte.Screen(80, 24)
    pyte.Stream(screen).feed(mode)
    data = "x\r\n" * 300
    assert keyframes.skip_plain(data, screen) == data


async def test_keyframes_of_bulk_output_are_those_of_emulating_every_byte(env, monkeypatch):
    clock = FixedClock(START)
    recorder = await env.open(env.store(clock=clock, recording__flush_interval=0.05))
    for second in range(130):
        clock.advance(1.0)
        body = "".join(f"{second:03d} {'QUJD' * (line % 25)}\n" for line in range(90))
        if second % 3 == 0:
            recorder.output(body.replace("\n", "\r\n").encode())  # through a terminal
        elif second % 3 == 1:
            recorder.output(body.encode())  # without one: bare line feeds
        else:  # an escape split across two reads: the second read looks plain but is not
            recorder.output(b"\x1b[3")
            recorder.output(b"1m" + body.encode())
            recorder.output(b"\x1b[0m\x1b[?7l" + b"w" * 120 + b"\x1b[?7h")
        if second == 64:
            recorder.resize(100, 30)
    await recorder.close("exited")
    fast = keyframes.build(recorder.path, env.vault, interval=10.0)
    monkeypatch.setattr(keyframes, "is_plain", lambda data: False)  # nothing skipped: every byte emulated
    slow = keyframes.build(recorder.path, env.vault, interval=10.0)
    assert len(fast) == 13
    assert fast == slow
