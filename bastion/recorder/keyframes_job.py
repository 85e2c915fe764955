"""Builds a recording's keyframes in a process of its own (`python -m bastion.recorder.keyframes_job`).

Terminal emulation of a long session is seconds of pure-Python CPU; in its own process, at the lowest
priority (bastion.lowpriority), it never holds the gateway's interpreter lock and yields the CPU to live
sessions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bastion.lowpriority import lower_priority
from bastion.recorder import keyframes
from bastion.vault import Vault


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bastion.recorder.keyframes_job KEYS_DIR RECORDING", file=sys.stderr)
        return 2
    keys_dir, path = Path(argv[0]), Path(argv[1])
    lower_priority()  # yield the CPU to live sessions
    vault = Vault.load(keys_dir)
    frames = keyframes.build(path, vault)
    if frames:
        keyframes.save(path, vault, frames)
    print(len(frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
