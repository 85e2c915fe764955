"""Who is calling: anonymous, a login in progress, a console session, or an API token."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bastion.auth import levels
from bastion.auth.identity import Identity
from bastion.console.websession import ConsoleSession



@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass
class Caller:
    """The authenticated (or not) party behind one request."""

    kind: str                      # anonymous | login | session | token
    source_addr: str
    user: User | None = None
    session: ConsoleSession | None = None
    scopes: frozenset[str] = frozenset()
    peer_mac: str | None = None
    cert_fingerprint: str = ""
    peer: object = None  # the listener's Peer (real address, and whether it came through a proxy)

    @property
    def level(self) -> int:
        if self.session is not None and self.session.authenticated:
            return levels.level_of(self.session.methods)
        return 0

    def has_role(self, role: str) -> bool:
        return self.user is not None and role in self.user.roles

    def identity(self) -> Identity:
        """The identity policy decisions are made for (console sessions only)."""
        assert self.user is not None and self.session is not None
        return Identity(self.user.id, self.user.name, self.user.roles, self.user.groups, self.level,
                        tuple(self.session.methods), self.source_addr, 0,
                        device_id=self.session.device_id, device_proof=self.session.device_proof)


CALLER_KEY = web.RequestKey("bastion_caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[CALLER_KEY]
