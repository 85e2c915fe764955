"""Login names: `user`, `user:target[:account]`, `user#target[#account]` or `user@target[@account]`.

scp, sftp and rsync split `alice:web01@host:path` at the first colon, so they need another separator;
scp also refuses '#' in the user of a download source, which the '@' form (as JumpServer uses) passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_LOGIN = 200


@dataclass(frozen=True)
class Route:
    user: str
    target: str | None = None
    account: str | None = None


def parse_login(login: str) -> Route | None:
    """Split a login name; None when it cannot name anything (treated like an unknown user)."""
    if not login or len(login) > MAX_LOGIN:
        return None
    used = [sep for sep in ("#", "@", ":") if sep in login]
    if len(used) > 1:
        return None
    sep = used[0] if used else ":"
    parts = login.split(sep)
    if len(parts) > 3 or not all(_PART.fullmatch(p) for p in parts):
        return None
    return Route(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)
