"""Commands typed and output shown in a recorded terminal session, read off an emulated screen (pyte)."""

# Pure: asciicast v2 events in, (offset, text) pairs out; no I/O.
#
# Commands. A line of input starts at its first keystroke: the cursor then marks where typing began,
# and the text left of it on its logical line (screen rows joined where text wrapped) is the prompt.
# Input holding CR or LF is Enter. The shell, or the terminal driver, draws every edit on the screen
# (backspace, cursor moves, Ctrl-U/Ctrl-W, history recall, reverse search, completion), so the command
# is what the screen shows on the cursor's logical line just before the shell answers the Enter with
# a line feed, with the prompt taken off: the topmost row of that line that starts with the prompt,
# else the position where typing began, else the whole line. Recorded input is only used to know
# *when* a line starts and ends, never as text, so keys that were not echoed never become a command;
# a line during which any input was recorded as hidden (`<hidden>`) is skipped entirely.
#
# Output. Each distinct line (logical, rstripped) is kept once, at its first sighting: rows that
# scroll off the top, and the rows on screen at each command boundary, before a clear or a resize, and
# at the end. A command's own line (prompt and command) is not kept again as output. Full-screen
# programs on the alternate screen (vim, less, top) are skipped: neither their screen nor the keys
# typed there are indexed, and the main screen comes back when they leave.
#
# Offsets are seconds from the start of the recording, rounded up to the millisecond: a command's is
# when the shell answered its Enter (the whole line is on screen then), an output line's when it was
# last seen before it scrolled off or was cleared, or when it was on screen at a command boundary.
#
# What it cannot know: a command the shell changes after Enter (aliases, `!!`, history expansion) is
# indexed as typed; a paste of several lines (bracketed paste) counts by its first line; text a
# program draws right of the input (zsh RPROMPT) ends up in the command; when the prompt is redrawn
# differently before the line feed, the command is read from where typing began, or else is the
# whole line, prompt included; input typed ahead of its prompt is found only when the same prompt
# comes back within a few lines; shells that do not echo (no terminal) yield no commands.
#
# Bounds (CPU and memory per session): MAX_EVENTS events; output between two inputs beyond BURST_HEAD
# characters is emulated only for its last BURST_TAIL characters (the middle is skipped: a long `cat`
# costs no more than a short one and the commands after it are still found, but its middle lines are
# not indexed); at most MAX_RENDERED_CHARS characters are emulated in all (pyte renders about
# 0.5-0.7 MB/s here, so about 15 s at worst); MAX_SNAPSHOT_CELLS screen cells read for boundary
# snapshots; MAX_OUTPUT_BYTES of distinct output text and MAX_COMMAND_BYTES / MAX_COMMANDS of
# commands are kept. `Extraction.truncated` tells that a bound cut something.

from __future__ import annotations

import json
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

import pyte
from pyte import modes as mo

from bastion.recorder.redact import HIDDEN
from bastion.search.screen import ALT_MODES, MAX_COLUMNS, MAX_LINE_CHARS, MAX_LINES, TrackedScreen

MAX_EVENTS = 1_000_000
MAX_RENDERED_CHARS = 8 * 1024 * 1024
BURST_HEAD = 16 * 1024
BURST_TAIL = 16 * 1024
MAX_OUTPUT_BYTES = 256 * 1024
MAX_COMMAND_BYTES = 256 * 1024
MAX_COMMANDS = 10_000
MAX_COMMAND_CHARS = 4096
# Screen cells read for boundary snapshots in all; a huge terminal and many commands stay cheap.
MAX_SNAPSHOT_CELLS = 10_000_000
MAX_INPUT_TOKENS = 4096       # per input event
MAX_PENDING_ENTERS = 8
MAX_LINEFEEDS_WAITING = 64    # for typed-ahead lines, whose prompt had not shown yet
MAX_PROMPT_CHARS = 4096
MAX_CAST_LINE = 4 * 1024 * 1024
MAX_PARSER_ERRORS = 100

_ALT_SWITCH = re.compile(r"\x1b\[\?([0-9;]{1,40})([hl])")
_INPUT_TOKENS = re.compile(r"\x1b\[20[01]~|[\r\n]|[^\r\n\x1b]+|\x1b")
_SIZE = re.compile(r"(\d{1,7})x(\d{1,7})")
_PASTE_START, _PASTE_END = "\x1b[200~", "\x1b[201~"


class Found(NamedTuple):
    """One searchable text: seconds from the start of the recording, and the text."""

    offset: float
    text: str


@dataclass
class Extraction:
    commands: list[Found] = field(default_factory=list)
    output: list[Found] = field(default_factory=list)
    events: int = 0
    skipped_chars: int = 0    # output not emulated (middles of long bursts)
    hidden_lines: int = 0     # lines not indexed because input was hidden
    truncated: bool = False   # a bound stopped the extraction or the text kept


@dataclass
class _Anchor:
    row: int             # screen row + rows scrolled off until then
    col: int
    epoch: int
    prompt: str | None   # text left of where typing began, on its logical line


@dataclass
class _Enter:
    time: float          # when Enter was typed
    anchor: _Anchor | None
    expect: str | None   # for lines typed ahead: the prompt their line should start with
    hidden: bool
    waited: int = 0


class _Extractor:
    """Feeds events to the screen and collects commands and output lines."""

    def __init__(self, width: int, height: int, *, commands: bool, crlf: bool):
        self.result = Extraction()
        self.screen = TrackedScreen(width, height, self)
        if crlf:
            self.screen.set_mode(mo.LNM)  # no terminal: a bare LF starts a new line
        self.stream = pyte.Stream(self.screen)
        self.want_commands = commands
        self.now = self.prev = 0.0
        self.line_started = False
        self.anchor: _Anchor | None = None
        self.hidden = False
        self.in_paste = False
        self.last_prompt: str | None = None
        self.pending: deque[_Enter] = deque()
        self.rendered = 0
        self.errors = 0
        self.stopped = False
        self.output_bytes = self.command_bytes = self.snapshot_cells = 0
        self.output_full = False
        self.seen: set[str] = set()
        self.burst = 0
        self.tail: deque[str] = deque()
        self.tail_chars = 0
        self.tail_time = 0.0
        self.gap = False  # output of this burst was skipped
        self.alt_probe = ""

    # -- events ------------------------------------------------------------------------------

    def event(self, time: float, code: str, data: str) -> None:
        if code != "o":
            self._end_burst()
        time = max(time, self.now)
        self.prev, self.now = self.now, time
        if code == "o":
            self._output(data)
        elif code == "i":
            self._input(data)
        elif code == "r":
            match = _SIZE.fullmatch(data)
            if match:
                self.screen.resize(lines=int(match.group(2)), columns=int(match.group(1)))

    def finish(self, events: int) -> Extraction:
        self._end_burst()
        while self.pending:
            enter = self.pending.popleft()
            if enter.anchor is not None or not enter.expect:
                self._resolve(enter)
        if not self.stopped:
            self._snapshot(self.now, every_row=True)
        if self.screen.carry and 0 not in self.screen.soft:
            self._add_output(self.screen.carry, self.now)
        self.result.events = events
        return self.result

    # -- output ------------------------------------------------------------------------------

    def _output(self, data: str) -> None:
        room = BURST_HEAD - self.burst
        if room > 0:
            head, data = data[:room], data[room:]
            self.burst += len(head)
            self._render(head)
        if not data:
            return
        self.tail.append(data)
        self.tail_chars += len(data)
        self.tail_time = self.now
        while len(self.tail) > 1 and self.tail_chars - len(self.tail[0]) >= BURST_TAIL:
            dropped = self.tail.popleft()
            self.tail_chars -= len(dropped)
            self._skip(dropped)

    def _end_burst(self) -> None:
        self.burst = 0
        if not self.tail:
            return
        text = "".join(self.tail)
        self.tail.clear()
        self.tail_chars = 0
        if len(text) > BURST_TAIL:
            self._skip(text[:-BURST_TAIL])
            text = text[-BURST_TAIL:]
        if self.gap:
            # Start at a line boundary: the cut line's start was never shown.
            newline = text.find("\n")
            if 0 <= newline < len(text) - 1:
                self._skip(text[:newline + 1])
                text = "\r\n" + text[newline + 1:]
        now = self.now
        self.now = self.tail_time
        self._render(text)
        self.now = now
        self.gap = False

    def _skip(self, text: str) -> None:
        """Output that is not emulated; only an alternate-screen switch in it is honoured."""
        if not self.gap:
            self.gap = True
            self._give_up_waiting()
        self.result.skipped_chars += len(text)
        probe = self.alt_probe + text
        last = None
        for match in _ALT_SWITCH.finditer(probe):
            if ALT_MODES.intersection(int(p) for p in match.group(1).split(";") if p.isdigit() and len(p) < 6):
                last = match.group(2)
        self.alt_probe = probe[-48:]
        if last == "h":
            self.screen.enter_alternate()
        elif last == "l":
            self.screen.leave_alternate()

    def _render(self, text: str) -> None:
        if self.stopped:
            return
        if self.rendered + len(text) > MAX_RENDERED_CHARS:
            text = text[:max(0, MAX_RENDERED_CHARS - self.rendered)]
            self.stopped = self.result.truncated = True
        self.rendered += len(text)
        # With an Enter pending, stop right before each line feed: that is when the line is read.
        while self.pending:
            newline = text.find("\n")
            if newline < 0:
                break
            self._feed(text[:newline])
            self._line_feed_due()
            self._feed("\n")
            text = text[newline + 1:]
        if text:
            self._feed(text)

    def _feed(self, text: str) -> None:
        if not text:
            return
        try:
            self.stream.feed(text)
        except Exception:
            # pyte failing on hostile output: its parser resets itself; the rest of this piece is lost.
            self.errors += 1
            if self.errors > MAX_PARSER_ERRORS:
                self.stopped = self.result.truncated = True

    def scrolled_off(self, text: str) -> None:
        self._add_output(text, self.prev)

    def about_to_vanish(self) -> None:
        self._snapshot(self.prev)

    def _snapshot(self, time: float, every_row: bool = False) -> None:
        screen = self.screen
        rows = range(screen.lines) if every_row else sorted(r for r in screen.touched if 0 <= r < screen.lines)
        screen.touched = set()
        screen.dirty.clear()  # pyte's own record, unused here: keep it from growing
        if self.output_full or screen.alternate:
            return
        self.snapshot_cells += len(rows) * screen.columns
        if self.snapshot_cells > MAX_SNAPSHOT_CELLS:
            self.result.truncated = True
            return
        done = -1
        for row in rows:
            if row <= done:
                continue
            top, bottom = screen.span(row)
            done = bottom
            self._add_output(screen.text(top, bottom), time)

    def _add_output(self, text: str, time: float) -> None:
        text = _clean(text.rstrip()[:MAX_LINE_CHARS])
        if self.output_full or not text.strip() or text in self.seen:
            return
        size = len(text.encode("utf-8"))
        if self.output_bytes + size > MAX_OUTPUT_BYTES:
            self.output_full = self.result.truncated = True
            return
        self.seen.add(text)
        self.output_bytes += size
        self.result.output.append(Found(_ms_up(time), text))

    # -- input and commands ------------------------------------------------------------------

    def _input(self, data: str) -> None:
        if not self.want_commands:
            return
        if self.screen.alternate:
            self.line_started, self.anchor, self.hidden, self.in_paste = False, None, False, False
            self.pending.clear()
            return
        if data == HIDDEN:
            self._keystroke()
            self.hidden = True
            return
        after_cr = False
        for count, match in enumerate(_INPUT_TOKENS.finditer(data)):
            if count >= MAX_INPUT_TOKENS:
                self.result.truncated = True
                break
            token = match.group()
            if token in ("\r", "\n"):
                if not self.in_paste and not (token == "\n" and after_cr):
                    self._enter()
                after_cr = token == "\r"
                continue
            after_cr = False
            if token == _PASTE_START:
                self.in_paste = True
            elif token == _PASTE_END:
                self.in_paste = False
                continue
            self._keystroke()

    def _keystroke(self) -> None:
        if self.line_started:
            return
        self.line_started = True
        # While an Enter still waits for its line feed the prompt of this line is not drawn yet.
        self.anchor = None if self.pending else self._capture()
        if self.anchor is not None and self.anchor.prompt and self.anchor.prompt.strip():
            self.last_prompt = self.anchor.prompt

    def _enter(self) -> None:
        self._keystroke()
        expect = None if self.anchor is not None else self.last_prompt
        self.pending.append(_Enter(self.now, self.anchor, expect, self.hidden))
        if len(self.pending) > MAX_PENDING_ENTERS:
            self.pending.popleft()
        self.line_started, self.anchor, self.hidden = False, None, False

    def _capture(self) -> _Anchor:
        screen = self.screen
        y, x = min(screen.cursor.y, screen.lines - 1), min(screen.cursor.x, screen.columns)
        top, _ = screen.span(y)
        prompt: str | None = "".join([screen.row_text(r) for r in range(top, y)] + [screen.row_text(y, 0, x)])
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = None
        return _Anchor(y + screen.scrolled, x, screen.epoch, prompt)

    def _line_feed_due(self) -> None:
        enter = self.pending[0]
        if enter.anchor is None and enter.expect and self._starts_with(enter.expect) is None:
            enter.waited += 1
            if enter.waited > MAX_LINEFEEDS_WAITING:
                self.pending.popleft()
            return
        self.pending.popleft()
        self._resolve(enter)
        self._snapshot(self.now)

    def _give_up_waiting(self) -> None:
        """Output is about to be skipped: read a pending line now, or never."""
        if self.pending:
            enter = self.pending.popleft()
            if enter.anchor is not None:
                self._resolve(enter)
            self.pending.clear()

    def _starts_with(self, prompt: str) -> str | None:
        """The cursor's logical line from its topmost row that starts with `prompt`, prompt removed."""
        screen = self.screen
        y = min(screen.cursor.y, screen.lines - 1)
        top, bottom = screen.span(y)
        for row in range(top, y + 1):
            line = screen.text(row, bottom)
            if line.startswith(prompt):
                return line[len(prompt):]
        return None

    def _resolve(self, enter: _Enter) -> None:
        if enter.hidden:
            self.result.hidden_lines += 1
            return
        if len(self.result.commands) >= MAX_COMMANDS or self.command_bytes >= MAX_COMMAND_BYTES:
            self.result.truncated = True
            return
        screen = self.screen
        y = min(screen.cursor.y, screen.lines - 1)
        top, bottom = screen.span(y)
        # The command line itself is indexed as the command, not again as output.
        self.seen.add(_clean(screen.text(top, bottom)[:MAX_LINE_CHARS]))
        prompt = enter.anchor.prompt if enter.anchor is not None else enter.expect
        command = self._starts_with(prompt) if prompt and prompt.strip() else None
        if command is None and enter.anchor is not None and enter.anchor.epoch == screen.epoch:
            row = enter.anchor.row - screen.scrolled
            if top <= row <= bottom:
                command = screen.text(row, bottom, start=enter.anchor.col)
        if command is None:
            command = screen.text(top, bottom)  # prompt unknown: the whole line
        command = _clean(command.strip()[:MAX_COMMAND_CHARS])
        if command:
            self.command_bytes += len(command.encode("utf-8"))
            # The moment the screen shows the whole line, accepted: what a replay should open at.
            self.result.commands.append(Found(_ms_up(max(enter.time, self.now)), command))


def _ms_up(seconds: float) -> float:
    # Rounded up to the millisecond: a replay opened at the offset has played the event in question.
    return math.ceil(round(seconds * 1000, 6)) / 1000


def _clean(text: str) -> str:
    # Lone surrogates (from a damaged cast line) cannot be encoded later; make them visible instead.
    return text.encode("utf-8", "replace").decode("utf-8")


def _dimension(value: Any, default: int, maximum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return min(value, maximum)
    return default


def _event(item: Any) -> tuple[float, str, str] | None:
    """A well-formed [time, code, data] event, or None for anything else."""
    if not isinstance(item, (list, tuple)) or len(item) != 3:
        return None
    time, code, data = item
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time) or time < 0:
        return None
    if code not in ("o", "i", "r", "m") or not isinstance(data, str):
        return None
    return float(time), code, data


def extract(events: Iterable[Any], *, width: Any = 80, height: Any = 24, commands: bool = True,
            crlf: bool = False) -> Extraction:
    """Commands and output lines of one session's events (`[time, code, data]`, header excluded).

    `commands=False` for sessions without typed command lines (exec); `crlf=True` when output came
    without a terminal (a bare LF starts a new line). Malformed events are ignored.
    """
    extractor = _Extractor(_dimension(width, 80, MAX_COLUMNS), _dimension(height, 24, MAX_LINES),
                           commands=commands, crlf=crlf)
    count = 0
    for item in events:
        if count >= MAX_EVENTS or extractor.stopped:
            extractor.result.truncated = True
            break
        count += 1
        event = _event(item)
        if event is not None:
            extractor.event(*event)
    return extractor.finish(count)


def _json(line: Any) -> Any:
    if not isinstance(line, str) or len(line) > MAX_CAST_LINE:
        return None
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def extract_cast(lines: Iterable[str], *, commands: bool = True, crlf: bool = False) -> Extraction:
    """The same from asciicast v2 lines, header first (as `bastion.recorder.reader.iter_lines` yields)."""
    iterator = iter(lines)
    header = _json(next(iterator, None))
    if not isinstance(header, dict):
        header = {}
    return extract((_json(line) for line in iterator), width=header.get("width"), height=header.get("height"),
                   commands=commands, crlf=crlf)
