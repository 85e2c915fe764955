"""A pyte screen that knows soft-wrapped rows, rows scrolled off, the alternate screen, and text about to vanish."""

from __future__ import annotations

from typing import Any

import pyte
from pyte.screens import Margins

MAX_COLUMNS = 1000  # a resize beyond is clamped: every row read costs its width
MAX_LINES = 500
MAX_LINE_CHARS = 4096
ALT_MODES = frozenset({47, 1047, 1049})


class TrackedScreen(pyte.Screen):
    """A pyte screen that also knows which rows continue the row above (soft wraps), counts rows
    scrolled off, keeps the main screen aside while an alternate one is up, and reports text that is
    about to vanish (scrolled off, cleared, resized away) to its owner.

    The owner has `output_full` (stop reporting), `scrolled_off(text)` (a logical line left the top)
    and `about_to_vanish()` (the screen is about to be cleared, resized or swapped: read it now).
    """

    def __init__(self, columns: int, lines: int, owner: Any):
        self._ready = False
        self.soft: set[int] = set()
        self.touched: set[int] = set()  # rows written since the owner last read them
        self.scrolled = 0   # anchors are kept as row + scrolled, so scrolling does not move them
        self.epoch = 0      # bumped when rows move in ways `scrolled` does not follow
        self.alternate = False
        self._main: tuple[dict[int, dict], tuple[int, int], set[int]] | None = None
        self._owner = owner
        self._drawing = False
        self.carry = ""  # a logical line whose start scrolled off while it goes on below
        super().__init__(columns, lines)
        self._ready = True

    # -- reading -----------------------------------------------------------------------------

    def row_text(self, y: int, start: int = 0, end: int | None = None) -> str:
        stop = self.columns if end is None else min(end, self.columns)
        line = self.buffer.get(y)  # .get: reading must not create rows in the defaultdict
        if line is None or stop <= start:
            return " " * max(0, stop - start)
        # Rows are sparse dicts; walking only the cells present avoids a Python-level miss per blank.
        cells = [" "] * (stop - start)
        for x, char in line.items():
            if start <= x < stop:
                cells[x - start] = char.data
        return "".join(cells)

    def span(self, y: int) -> tuple[int, int]:
        """First and last row of the logical line that row `y` belongs to."""
        top = y
        while top > 0 and top in self.soft:
            top -= 1
        bottom = y
        while bottom + 1 < self.lines and bottom + 1 in self.soft:
            bottom += 1
        return top, bottom

    def text(self, top: int, bottom: int, start: int = 0) -> str:
        parts = [self.row_text(top, start)] + [self.row_text(r) for r in range(top + 1, bottom + 1)]
        if top == 0 and start == 0 and 0 in self.soft:
            parts.insert(0, self.carry)  # the line began in rows already scrolled off
        return "".join(parts).rstrip()

    def _forget_rows(self) -> None:
        self.soft = set()
        self.touched = set(range(self.lines))
        self.epoch += 1
        self.carry = ""

    # -- pyte events -------------------------------------------------------------------------

    def draw(self, data: str) -> None:
        self._drawing = True
        self.touched.add(self.cursor.y)
        try:
            super().draw(data)
        finally:
            self._drawing = False
            self.touched.add(self.cursor.y)

    def linefeed(self) -> None:
        wrapping = self._drawing  # draw() only feeds lines when text runs past the right margin
        super().linefeed()
        if wrapping:
            self.soft.add(self.cursor.y)
            self.touched.add(self.cursor.y)

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == bottom:
            self._scroll_off(top)
            self.soft = {y - 1 if top < y <= bottom else y for y in self.soft if y != top}
            self.touched = {y - 1 if top < y <= bottom else y for y in self.touched if y != top}
            if top == 0 and bottom == self.lines - 1:
                self.scrolled += 1
            else:
                self.epoch += 1
        super().index()

    def reverse_index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == top:
            self.soft = {y + 1 if top < y < bottom else y for y in self.soft if y != bottom and y != top}
            self.touched = {y + 1 if top <= y < bottom else y for y in self.touched if y != bottom}
            if top == 0 and bottom == self.lines - 1:
                self.scrolled -= 1
            else:
                self.epoch += 1
            self.carry = ""
        super().reverse_index()

    def _scroll_off(self, top: int) -> None:
        if self.alternate or self._owner.output_full:
            self.carry = ""
            return
        head = self.carry if top in self.soft else ""
        if self.carry and not head:
            self._owner.scrolled_off(self.carry)  # its continuation was erased meanwhile
        text = head + self.row_text(top)
        self.carry = ""
        if top + 1 in self.soft and len(text) < MAX_LINE_CHARS:
            self.carry = text  # the line goes on in the next row: report it whole, later
            return
        self._owner.scrolled_off(text)

    def insert_lines(self, count: int | None = None) -> None:
        self._forget_rows()
        super().insert_lines(count)

    def delete_lines(self, count: int | None = None) -> None:
        self._forget_rows()
        super().delete_lines(count)

    def insert_characters(self, count: int | None = None) -> None:
        self.touched.add(self.cursor.y)
        super().insert_characters(count)

    def delete_characters(self, count: int | None = None) -> None:
        self.touched.add(self.cursor.y)
        super().delete_characters(count)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        if how not in (0, 1, 2, 3):
            return  # pyte fails on other values
        if how >= 2:
            if self._ready and not self.alternate:
                self._owner.about_to_vanish()
            self._forget_rows()
        elif how == 0:
            y, x = self.cursor.y, self.cursor.x
            self.soft = {r for r in self.soft if r < y or (r == y and x > 0)}
        else:
            self.soft = {r for r in self.soft if r > self.cursor.y}
        super().erase_in_display(how, *args, **kwargs)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        if how not in (0, 1, 2):
            return  # pyte fails on other values
        if how == 2 or (how == 0 and self.cursor.x == 0):
            self.soft.discard(self.cursor.y)
        super().erase_in_line(how, private)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        lines = min(max(lines or self.lines, 1), MAX_LINES)
        columns = min(max(columns or self.columns, 1), MAX_COLUMNS)
        if (lines, columns) == (self.lines, self.columns):
            return
        if self._ready and not self.alternate:
            self._owner.about_to_vanish()
        self._forget_rows()
        super().resize(lines, columns)
        self.ensure_hbounds()
        self.ensure_vbounds()

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and ALT_MODES.intersection(modes):
            self.enter_alternate()
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private") and ALT_MODES.intersection(modes):
            self.leave_alternate()
        super().reset_mode(*modes, **kwargs)

    def reset(self) -> None:
        if self._ready:
            if not self.alternate:
                self._owner.about_to_vanish()
            self.alternate, self._main = False, None
            self._forget_rows()
        super().reset()

    # -- alternate screen --------------------------------------------------------------------

    def enter_alternate(self) -> None:
        if self.alternate:
            return
        if self._ready:
            self._owner.about_to_vanish()
        rows = {y: dict(line) for y, line in self.buffer.items()}
        self._main = (rows, (self.cursor.x, self.cursor.y), set(self.soft))
        self.alternate = True
        self.buffer.clear()
        self._forget_rows()

    def leave_alternate(self) -> None:
        if not self.alternate or self._main is None:
            return
        rows, (x, y), soft = self._main
        self._main, self.alternate = None, False
        self.buffer.clear()
        for r, cells in rows.items():
            if r < self.lines:
                self.buffer[r].update({c: ch for c, ch in cells.items() if c < self.columns})
        self.cursor.x, self.cursor.y = min(x, self.columns), min(y, self.lines - 1)
        self._forget_rows()
        self.soft = {r for r in soft if r < self.lines}
