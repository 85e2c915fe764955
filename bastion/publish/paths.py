"""Paths of files inside a dataset: relative, '/'-separated, nothing that could escape or hide."""

from __future__ import annotations

import unicodedata

MAX_PATH = 512


def check_relpath(path: object) -> str:
    """Return `path` if it is a clean dataset path, else raise ValueError (the message names the rule)."""
    if not isinstance(path, str) or not path:
        raise ValueError("empty path")
    if len(path) > MAX_PATH:
        raise ValueError(f"path longer than {MAX_PATH} characters")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("path is not valid UTF-8") from None
    if path.startswith("/") or "\\" in path:
        raise ValueError("path must be relative and use '/'")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in path):
        raise ValueError("path holds control or invisible characters")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("path holds an empty, '.' or '..' component")
    return path


def shown(path: str, limit: int = 80) -> str:
    """A path safe to put in a message: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in path)
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")
