"""Who a connection has proven to be, and how strongly."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    """An authenticated user at a level, with the methods that got them there."""

    user_id: int
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    level: int
    methods: tuple[str, ...]
    source_addr: str
    source_port: int = 0

    def with_factor(self, method: str, level: int) -> "Identity":
        return Identity(self.user_id, self.name, self.roles, self.groups, max(self.level, level),
                        self.methods + (method,), self.source_addr, self.source_port)
