"""A software security key for the real OpenSSH tools: the C provider, its builder and its state directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.support.sk_provider.build import ProviderUnavailable, build

__all__ = ["ProviderUnavailable", "SoftSkState", "build", "provider_env"]


@dataclass(frozen=True)
class SoftSkState:
    """The provider's state directory: what a test writes to steer the next signatures and reads back.

    Its path is baked into every key handle enrolled while ``BASTION_SOFTSK_STATE_DIR`` points at it, so
    signing follows these files whatever environment ssh-sk-helper (or an agent) runs with.
    """

    path: Path

    def __post_init__(self):
        self.path.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """Environment for ssh-keygen (and ssh) so enrolled keys bind to this state dir."""
        return {"BASTION_SOFTSK_STATE_DIR": str(self.path)}

    def _set(self, name: str, value: str | None) -> None:
        file = self.path / name
        if value is None:
            file.unlink(missing_ok=True)
        else:
            file.write_text(value + "\n")

    def set_flags(self, flags: int | None) -> None:
        """Flags for the following signatures (None: what a real key would report)."""
        self._set("flags", None if flags is None else f"0x{flags:02x}")

    def set_counter(self, last: int) -> None:
        """Make the next signature's counter last + 1."""
        self._set("counter", str(last))

    @property
    def counter(self) -> int:
        """The last counter used (0 before any signature)."""
        file = self.path / "counter"
        return int(file.read_text().strip() or 0) if file.exists() else 0

    def refuse(self, on: bool = True) -> None:
        """Fail every operation as a key nobody touched would."""
        self._set("refuse", "1" if on else None)

    def set_pin(self, pin: str | None) -> None:
        """The device PIN that verify-required keys must be given (None: any PIN verifies)."""
        self._set("pin", pin)

    def log(self) -> list[dict[str, str]]:
        """One dict per provider operation: {"op": "sign", "flags": "0x01", "counter": "7", ...}."""
        file = self.path / "log"
        if not file.exists():
            return []
        entries = []
        for line in file.read_text().splitlines():
            op, *fields = line.split()
            entries.append({"op": op, **dict(f.split("=", 1) for f in fields if "=" in f),
                            **{f: "" for f in fields if "=" not in f}})
        return entries

    def signatures(self) -> list[dict[str, str]]:
        return [e for e in self.log() if e["op"] == "sign" and "counter" in e]


def provider_env(base: dict[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """A copy of base (default os.environ) without any BASTION_SOFTSK_* leaking in from outside."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.startswith("BASTION_SOFTSK_")}
    env.update(overrides)
    return env
