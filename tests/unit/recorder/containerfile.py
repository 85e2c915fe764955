"""File surgery on recordings for tamper tests: split into records, change them, join again."""

from __future__ import annotations

import io
import json
from pathlib import Path

from bastion.recorder import container


def split_file(path: Path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(preamble bytes, [(type, payload), ...]) of a well-formed recording."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    preamble = container.read_preamble(stream)
    records = [(r.type, r.payload) for r in container.read_records(stream, len(preamble.raw))]
    return preamble.raw, records


def join_file(path: Path, preamble: bytes, records: list[tuple[bytes, bytes]]) -> None:
    path.write_bytes(preamble + b"".join(container.frame(kind, payload) for kind, payload in records))


def record_offsets(path: Path) -> list[tuple[int, int, bytes]]:
    """(offset, size on disk, type) of every record."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    preamble = container.read_preamble(stream)
    return [(r.offset, r.size, r.type) for r in container.read_records(stream, len(preamble.raw))]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def read_cast(path: Path) -> tuple[dict, list[list]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def output_text(events: list[list]) -> str:
    return "".join(event[2] for event in events if event[1] == "o")


def open_in_sealer(env, path: Path, chunk_bytes: int):
    """A Sealer (in this process) holding recording "r" of session "s" at `path`, just created."""
    import os

    from bastion.recorder.sealer import Sealer

    sealer = Sealer(env.config.keys_dir)
    data_key = os.urandom(32)
    preamble = container.encode_preamble("s", "2026-11-28T12:00:00+00:00", "node-test",
                                         env.vault.wrap_key(data_key, context=container.key_context("s")))
    path.write_bytes(preamble)
    status = os.stat(path)
    sealer.handle("open", "r", (str(path), (status.st_dev, status.st_ino), "s", data_key, preamble,
                                b'{"version": 2}\n', chunk_bytes))
    return sealer
