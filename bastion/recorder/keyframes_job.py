"""Builds a recording's keyframes in a process of its own (`python -m bastion.recorder.keyframes_job`).

Terminal emulation of a long session is seconds of pure-Python CPU; in its own process, run as idle
work (bastion.idlework), it never holds the gateway's interpreter lock nor takes a core from live sessions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bastion.idlework import become_idle_work
from bastion.recorder import keyframes
from bastion.vault import Vault


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bastion.recorder.keyframes_job KEYS_DIR RECORDING", file=sys.stderr)
        return 2
    keys_dir, path = Path(argv[0]), Path(argv[1])
    become_idle_work()  # never take a core from live sessions
    vault = Vault.load(keys_dir)
    frames = keyframes.build(path, vault)
    if frames:
        keyframes.save(path, vault, frames)
    print(len(frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
