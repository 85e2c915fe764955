"""A gateway for measurement only: `bastion serve` whose recorders drop every byte (recording on ÷ off).

The product has no switch to turn recording off, by design; `make bench` starts this beside the real
gateway so the cost of recording can be stated as a ratio. Everything else (policy, upstream, relay,
audit, session rows, markers) runs unchanged.
"""

from __future__ import annotations

import sys

from bastion import cli
from bastion.recorder.sink import SessionRecorder


def _count_only_output(self: SessionRecorder, data: bytes) -> None:
    self.bytes_out += len(data)


def _count_only_input(self: SessionRecorder, data: bytes) -> None:
    self.bytes_in += len(data)


def main(argv: list[str]) -> int:
    SessionRecorder.output = _count_only_output  # type: ignore[method-assign]
    SessionRecorder.input = _count_only_input  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
