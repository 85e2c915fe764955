"""Seek points for long recordings: terminal snapshots every so often, and where the events after them are.

Built once a session has ended (terminal emulation is too slow for the live path), stored next to
the recording as ``<session>.bkf``: ``b"BASTKEYF\\x01" | 12-byte nonce | AES-256-GCM(zlib(JSON))``
under the recording's own data key (so crypto-shredding the recording shreds its keyframes too),
with ``b"keyframes:" + session_id`` as associated data.

A replay that starts at time T takes the last keyframe at or before T, shows its snapshot, and
decrypts only the chunks from there on: the start and a jump to the end cost one snapshot and a
few chunks, not the whole session. Snapshots keep text, colours and bold/underline/reverse; other
attributes and the scrollback are not kept (the events after the snapshot are exact).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyte
from pyte import charsets, modes as mo
# The width function pyte's own Screen.draw uses (wcwidth, cached): the column follows it exactly.
from pyte.screens import wcwidth
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import RecordingError
from bastion.recorder import container
from bastion.recorder.reader import _chunk_lines, _data_key, _decrypt, _open_file, verify
from bastion.vault import Vault

SUFFIX = ".bkf"
MAGIC = b"BASTKEYF\x01"
INTERVAL = 30.0
HOLD_CHARS = 4 * 1024 * 1024
MAX_SIDE = 1000
_FG = {"black": 30, "red": 31, "green": 32, "brown": 33, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36,
       "white": 37}


@dataclass(frozen=True)
class Keyframe:
    time: float     # the snapshot shows the screen just before the first event at or after this time
    chunk: int      # that event's chunk ...
    offset: int     # ... whose record starts at this byte of the file
    line: int       # ... and its line index inside the chunk
    width: int
    height: int
    screen: str     # ANSI text that redraws the screen and puts the cursor back


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(SUFFIX)


def _colour(value: str, base: int) -> str:
    if value == "default":
        return ""
    if value in _FG:
        return str(_FG[value] + (base - 30))
    if len(value) == 6:
        try:
            r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            return ""
        return f"{base + 8};2;{r};{g};{b}"
    return ""


def render(screen: pyte.Screen) -> str:
    """The screen as escape sequences that draw it on a cleared terminal."""
    out = ["\x1b[0m\x1b[2J"]
    for y in range(screen.lines):
        row = screen.buffer[y]
        last = max((x for x in row if row[x].data not in (" ", "") or row[x].bg != "default"), default=-1)
        if last < 0:
            continue
        out.append(f"\x1b[{y + 1};1H")
        style = None
        for x in range(last + 1):
            char = row[x]
            codes = [c for c in (_colour(char.fg, 30), _colour(char.bg, 40)) if c]
            codes += ["1"] if char.bold else []
            codes += ["4"] if char.underscore else []
            codes += ["7"] if char.reverse else []
            wanted = ";".join(codes)
            if wanted != style:
                out.append("\x1b[0m" + (f"\x1b[{wanted}m" if wanted else ""))
                style = wanted
            out.append(char.data or " ")
        out.append("\x1b[0m")
        style = None
    out.append(f"\x1b[{screen.cursor.y + 1};{screen.cursor.x + 1}H")
    return "".join(out)


def _size(data: object, width: int, height: int) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in str(data).split("x", 1))
    except ValueError:
        return width, height
    return (w, h) if 1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE else (width, height)


# Output with nothing but printable text, tabs, CR and LF: it only moves the cursor and writes rows.
_NOT_PLAIN = re.compile(r"[^\t\n\r\x20-\x7e\xa0-\U0010ffff]")
_PLAIN_ASCII = b"\t\n\r" + bytes(range(0x20, 0x7f))


def is_plain(data: str) -> bool:
    """Whether `data` is only printable text, tabs, CR and LF (no escape, no other control)."""
    if data.isascii():  # the common case, 5x faster as bytes: delete what is plain, see if anything is left
        return not data.encode().translate(None, _PLAIN_ASCII)
    return _NOT_PLAIN.search(data) is None


def skip_plain(data: str, screen: pyte.Screen) -> str:
    """The part of plain output still to emulate; the cursor is put where the part skipped would leave it.

    Why: pyte emulates about 0.6 MB/s, so a `cat` of 256 MiB cost minutes of CPU for keyframes that
    show only its last screen. Exact, not a guess (full-screen scroll region assumed, else nothing is
    skipped): with at least height - 1 line feeds in the skipped part, the cursor ends it on the
    bottom row whatever row it started on; from there each of the height line feeds in the rest
    scrolls, so every row on the screen at the cut has gone by the end. What is left to know is the
    cursor's column: right after a carriage return it is 0; with none (output without a terminal:
    bare LF) `column_after` follows it through the characters skipped. Any other control or escape
    can change modes, margins or the character set: such output is emulated in full.
    """
    return data[_skipped_length([data], screen):] if is_plain(data) else data


def _skipped_length(pieces: list[str], screen: pyte.Screen) -> int:
    """How much of plain `pieces` (read by read, already found plain) skip_plain skips; moves the cursor."""
    data = "".join(pieces)
    height = screen.lines
    if data.count("\n") < 2 * height - 1:
        return 0
    if screen.margins not in (None, (0, height - 1)) or mo.LNM in screen.mode:
        return 0
    position = len(data)
    for _ in range(height):  # the rest starts at the height-th line feed from the end
        position = data.rfind("\n", 0, position)
    carriage = data.rfind("\r", 0, position)
    cut = carriage + 1 if carriage >= 0 else position
    if data.count("\n", 0, cut) < height - 1:
        return 0
    if carriage < 0:
        x = column_after(_first(pieces, cut), screen)
        if x is None:
            return 0
        screen.cursor.x = x
    else:
        screen.cursor.x = 0
    screen.cursor.y = height - 1
    return cut


def _first(pieces: list[str], length: int) -> Iterator[str]:
    """The first `length` characters of `pieces`, still split where the pieces were."""
    for piece in pieces:
        if length <= 0:
            return
        yield piece[:length]
        length -= len(piece)


def column_after(pieces: Iterable[str], screen: pyte.Screen) -> int | None:
    """The cursor's column once pyte has been fed plain `pieces` without a carriage return; None if unknown.

    A line feed (new-line mode off) leaves the column as it is, so the column runs on through all of
    the text: from a 256 MiB `cat` of source code (tabs, some non-ASCII) without a terminal, emulating
    it all took pyte over five minutes. This follows only the column, as `Screen.draw` and `Screen.tab`
    move it: each run between line feeds and tabs within one feed is one `draw` call, where an ASCII
    run moves the column by its length (wrapping at the edge with autowrap on, stopping there with it
    off) and any other character by its width, and a character that neither has a width nor combines
    ends its run. A resize that narrows the screen can leave the cursor, and tab stops, past the edge:
    pyte draws the next character there and stops at the edge. Under another character set the
    widths could differ: None.
    """
    if screen.charset != 0 or screen.g0_charset != charsets.LAT1_MAP:
        return None
    x, columns, wrap = screen.cursor.x, screen.columns, mo.DECAWM in screen.mode
    stops = sorted(screen.tabstops)

    def advance(x: int, drawn: int) -> int:
        if not drawn:
            return x
        if x > columns:  # past the edge (a resize): the first character goes there, the cursor to the edge
            x, drawn = columns, drawn - 1
            if not drawn:
                return x
        if wrap:  # at the right edge the next character wraps to column 0 first
            return (((x if x < columns else 0) + drawn - 1) % columns) + 1
        return min(x + drawn, columns)

    for piece in pieces:
        if piece.isascii() and "\t" not in piece:  # one column each, no run ends early: only the count
            x = advance(x, len(piece) - piece.count("\n"))
            continue
        for line in piece.split("\n"):
            for number, run in enumerate(line.split("\t")):
                if number:  # a tab before this run: to the next stop, or the last column if none is left
                    x = next((stop for stop in stops if x < stop), columns - 1)
                if run.isascii():
                    x = advance(x, len(run))
                    continue
                for char in run:
                    width = wcwidth(char)
                    if x == columns:
                        if wrap:
                            x = 0
                        elif width > 0:
                            x -= width
                    if width <= 0 and not (width == 0 and unicodedata.combining(char)):
                        break  # pyte draws nothing more of this run
                    if width > 0:
                        x = min(x + width, columns)
    return x


def _chunks(path: Path, vault: Vault) -> Iterator[tuple[int, int, list[str], container.Preamble]]:
    """(seq, file offset, lines) of every chunk that decrypts, in order; stops at the first that does not."""
    with _open_file(path) as stream:
        preamble = container.read_preamble(stream)
        aead = _data_key(preamble, vault)
        size = os.fstat(stream.fileno()).st_size
        try:
            for record in container.read_records(stream, len(preamble.raw), size):
                if record.type != container.CHUNK:
                    return
                chunk = container.parse_chunk(record.payload)
                compressed = _decrypt(aead, preamble.session_id, chunk)
                lines = None if compressed is None else _chunk_lines(compressed)
                if lines is None:
                    return
                yield chunk.seq, record.offset, lines, preamble
        except container.ContainerError:
            return


def build(path: Path, vault: Vault, interval: float = INTERVAL) -> list[Keyframe]:
    """Emulate the session's terminal once and snapshot it every `interval` seconds of session time."""
    keyframes: list[Keyframe] = []
    screen: pyte.Screen | None = None
    stream: pyte.Stream | None = None
    width, height, next_at = 80, 24, interval
    # Plain output (see skip_plain) is held back until something else comes, a snapshot is due or
    # HOLD_CHARS are held, then emulated at once: a long `cat` costs a few screens, not every read.
    held: list[str] = []
    held_chars = 0

    def emulate_held() -> None:
        nonlocal held_chars
        if held and screen is not None and stream is not None:
            # Still read by read: pyte ends a run at a character with no width, so joined reads could
            # draw less than the same reads one by one.
            skipped = _skipped_length(held, screen)
            for piece in held:
                if skipped < len(piece):
                    stream.feed(piece[max(skipped, 0):])
                skipped -= len(piece)
        held.clear()
        held_chars = 0

    for seq, offset, lines, _ in _chunks(path, vault):
        for index, line in enumerate(lines):
            if seq == 0 and index == 0:
                try:
                    header = json.loads(line)
                    width, height = _size(f"{header.get('width')}x{header.get('height')}", width, height)
                except (ValueError, AttributeError):
                    pass
                screen = pyte.Screen(width, height)
                stream = pyte.Stream(screen)
                continue
            try:
                time, code, data = json.loads(line)
                time = float(time)
            except (ValueError, TypeError):
                continue
            if screen is None or stream is None:
                continue
            if time >= next_at:
                emulate_held()
                keyframes.append(Keyframe(time, seq, offset, index, screen.columns, screen.lines, render(screen)))
                while next_at <= time:
                    next_at += interval
            if code == "o" and isinstance(data, str):
                # Held only while the parser is between sequences (an escape split across reads is
                # finished by the next one); pyte names that state in a private attribute: without it,
                # nothing is held and everything is emulated.
                if is_plain(data) and (held or getattr(stream, "_taking_plain_text", False) is True):
                    held.append(data)
                    held_chars += len(data)
                    if held_chars >= HOLD_CHARS:
                        emulate_held()
                else:
                    emulate_held()
                    stream.feed(data)
            elif code == "r":
                emulate_held()
                width, height = _size(data, screen.columns, screen.lines)
                screen.resize(height, width)
    return keyframes


def save(path: Path, vault: Vault, keyframes: list[Keyframe]) -> Path:
    with _open_file(path) as stream:
        preamble = container.read_preamble(stream)
    aead = _data_key(preamble, vault)
    nonce = os.urandom(12)
    body = zlib.compress(json.dumps([asdict(k) for k in keyframes]).encode(), 6)
    blob = MAGIC + nonce + aead.encrypt(nonce, body, b"keyframes:" + preamble.session_id.encode())
    target = sidecar(path)
    temporary = target.with_suffix(".bkf.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def load(path: Path, vault: Vault) -> list[Keyframe]:
    """The keyframes of a recording; [] when there are none (yet), or they do not open."""
    target = sidecar(path)
    try:
        blob = target.read_bytes()
        with _open_file(path) as stream:
            preamble = container.read_preamble(stream)
    except (OSError, RecordingError, container.ContainerError):
        return []
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 28:
        return []
    nonce, sealed = blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:]
    try:
        body = _data_key(preamble, vault).decrypt(nonce, sealed, b"keyframes:" + preamble.session_id.encode())
        return [Keyframe(**item) for item in json.loads(zlib.decompress(body))]
    except (InvalidTag, ValueError, TypeError, zlib.error):
        return []


def lines_from(path: Path, vault: Vault, public_key: Ed25519PublicKey, start: float) -> Iterator[str]:
    """Asciicast lines that replay the session from `start` seconds: the nearest earlier snapshot first,
    then the events after it, with times counted from the snapshot. The header carries
    `bastion_offset` (the snapshot's time in the session) so players can show real times."""
    report = verify(path, public_key)  # hash chain and signature, without decrypting anything
    usable = report.chunks
    keyframe = None
    for candidate in load(path, vault):
        if candidate.time <= start and candidate.chunk < usable:
            keyframe = candidate
    with _open_file(path) as stream:
        preamble = container.read_preamble(stream)
        aead = _data_key(preamble, vault)
        size = os.fstat(stream.fileno()).st_size
        first = next(container.read_records(stream, len(preamble.raw), size))
        header = json.loads(_chunk_lines(_decrypt(aead, preamble.session_id, container.parse_chunk(first.payload)))[0])
        if keyframe is None:
            header["bastion_offset"] = 0.0
            yield json.dumps(header, ensure_ascii=False)
            for seq, _, lines, _ in _chunks(path, vault):
                if seq >= usable:
                    return
                yield from (lines[1:] if seq == 0 else lines)
            return
        header.update({"width": keyframe.width, "height": keyframe.height, "bastion_offset": keyframe.time})
        yield json.dumps(header, ensure_ascii=False)
        yield json.dumps([0.0, "o", keyframe.screen], ensure_ascii=False)
        stream.seek(keyframe.offset)
        for record in container.read_records(stream, keyframe.offset, size):
            if record.type != container.CHUNK:
                return
            chunk = container.parse_chunk(record.payload)
            if chunk.seq >= usable:
                return
            compressed = _decrypt(aead, preamble.session_id, chunk)
            lines = None if compressed is None else _chunk_lines(compressed)
            if lines is None:
                return
            for index, line in enumerate(lines):
                if chunk.seq == keyframe.chunk and index < keyframe.line:
                    continue
                try:
                    time, code, data = json.loads(line)
                    yield json.dumps([round(max(0.0, float(time) - keyframe.time), 6), code, data],
                                     ensure_ascii=False)
                except (ValueError, TypeError):
                    continue
