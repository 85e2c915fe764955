"""Recognise legacy `scp -t/-f` exec commands as file transfers (rsync needs `exec`).

rsync's server side takes options that delete (`--remove-source-files`), write anywhere
(`--log-file`) or run commands (`--daemon --config`), so it is never treated as a mere transfer.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# A transfer command may carry no shell syntax at all: otherwise `scp -t x; rm -rf /` would pass
# as a "transfer" under a grant that has no `exec`.
_SAFE = re.compile(r"^[A-Za-z0-9_./~ =,:+@%-]+$")
SCP_SERVER_FLAGS = "tfrpdv"


@dataclass(frozen=True)
class ExecTransfer:
    protocol: str   # scp | rsync
    direction: str  # upload | download
    path: str

    @property
    def action(self) -> str:
        return "sftp-write" if self.direction == "upload" else "sftp-read"


def classify_exec(command: str) -> ExecTransfer | None:
    """An ExecTransfer when `command` is exactly a server-side scp or rsync invocation."""
    if not _SAFE.fullmatch(command or ""):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words:
        return None
    if words[0] != "scp":
        return None
    flags = [w for w in words[1:] if w.startswith("-")]
    paths = [w for w in words[1:] if not w.startswith("-")]
    letters = "".join(f[1:] for f in flags if f != "--")
    # the server side of scp knows only these: to, from, recursive, preserve times, directory, verbose
    if set(letters) - set(SCP_SERVER_FLAGS) or len(paths) != 1 or ("t" in letters) == ("f" in letters):
        return None
    return ExecTransfer("scp", "upload" if "t" in letters else "download", paths[0])
