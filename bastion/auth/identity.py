"""Who a connection has proven to be, and how strongly."""

from __future__ import annotations

from dataclasses import dataclass


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
    device_id: int | None = None
    device_proof: str = ""
