"""Files only their owner may read (created exclusively with mode 0600, never overwritten), written durably."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> Path:
    """Create `path` with mode 0600 and write `data`; an existing file is an error (FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


def fsync_dir(path: Path, missing_ok: bool = False) -> None:
    """Make the entries of directory `path` (a rename, a new file, an unlink) survive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
