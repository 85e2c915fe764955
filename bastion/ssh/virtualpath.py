"""A strict, purely lexical resolver for paths of the virtual `datasets` SFTP tree (no filesystem access)."""

from __future__ import annotations

import unicodedata

MAX_PATH_BYTES = 4096
MAX_DEPTH = 64
# The same characters the catalog refuses in file names (publish.paths.check_relpath), plus the backslash.
_REFUSED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def resolve(path: object) -> tuple[str, ...] | None:
    """The components of `path` below the virtual root, or None when it can name nothing.

    The working directory is always the root, so relative and absolute paths mean the same; '.' and empty
    components vanish and '..' never climbs above the root (as under a chroot). Nothing is decoded beyond
    strict UTF-8: '%2e%2e' or a fullwidth dot is just a name, which then has to match a granted one exactly.
    """
    if not isinstance(path, (bytes, bytearray)) or len(path) > MAX_PATH_BYTES:
        return None
    try:
        text = bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in text or any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in text):
        return None
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if len(parts) > MAX_DEPTH:
        return None
    return tuple(parts)


def render(parts: tuple[str, ...]) -> bytes:
    """The canonical absolute path of resolved components."""
    return ("/" + "/".join(parts)).encode("utf-8")
