"""The interactive target menu: numbers, arrows and type-to-filter over the user's granted targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.policy import GrantedTarget

CLEAR = b"\x1b[H\x1b[2J"
MAX_FILTER = 64


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Chosen:
    item: GrantedTarget


@dataclass
class TargetMenu:
    """Keyboard state machine; `feed` returns an outcome once the user chose or quit."""

    user: str
    items: list[GrantedTarget]
    height: int = 24
    query: str = ""
    cursor: int = 0
    _escape: bytes = field(default=b"")

    def visible(self) -> list[tuple[int, GrantedTarget]]:
        numbered = list(enumerate(self.items, start=1))
        if not self.query:
            return numbered
        if self.query.isdigit():
            return [(n, item) for n, item in numbered if str(n).startswith(self.query)]
        q = self.query.lower()
        return [(n, item) for n, item in numbered if q in item.target.lower() or q in item.account.lower()]

    def render(self) -> bytes:
        rows = self.visible()
        self.cursor = max(0, min(self.cursor, len(rows) - 1))
        lines = [f"Bastion \u2014 targets for {self.user}", "",
                 "  \u2191/\u2193 move  Enter connect  type to filter  Esc clear  q quit", ""]
        room = max(3, self.height - 8)
        first = max(0, self.cursor - room + 1)
        for index, (number, item) in enumerate(rows[first:first + room], start=first):
            mark = "\x1b[7m>" if index == self.cursor else " "
            lines.append(f"{mark} {number:>3}  {item.target:<24} {item.account:<16}\x1b[0m")
        if not rows:
            lines.append("  (no target matches)" if self.items else "  (no targets are granted to you)")
        lines += ["", f"filter: {self.query}"]
        return CLEAR + "\r\n".join(lines).encode("utf-8", "replace")

    def feed(self, data: bytes) -> Quit | Chosen | None:
        for byte in data:
            outcome = self._key(bytes([byte]))
            if outcome is not None:
                return outcome
        return None

    def _key(self, key: bytes) -> Quit | Chosen | None:
        if self._escape:
            if len(self._escape) == 1 and key not in (b"[", b"O"):
                self._escape = b""  # a lone Esc clears the filter; the key after it is an ordinary key
                self.query, self.cursor = "", 0
                return self._key(key)
            self._escape += key
            sequence = self._escape
            if sequence in (b"\x1b[A", b"\x1bOA"):
                self.cursor -= 1
            elif sequence in (b"\x1b[B", b"\x1bOB"):
                self.cursor += 1
            elif len(sequence) < 3 or (len(sequence) < 8 and not sequence[-1:].isalpha() and sequence[-1:] != b"~"):
                return None
            self._escape = b""
            return None
        if key == b"\x1b":
            self._escape = key
            return None
        if key in (b"\x03", b"\x04") or (key in (b"q", b"Q") and not self.query):
            return Quit()
        if key in (b"\r", b"\n"):
            rows = self.visible()
            if rows:
                return Chosen(rows[max(0, min(self.cursor, len(rows) - 1))][1])
            return None
        if key in (b"\x7f", b"\x08"):
            self.query, self.cursor = self.query[:-1], 0
            return None
        char = key.decode("ascii", "ignore")
        if char and (char.isalnum() or char in "-_.") and len(self.query) < MAX_FILTER:
            self.query, self.cursor = self.query + char, 0
        return None
