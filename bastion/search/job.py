"""Extracts and seals one recording's search entries in a process of its own (`python -m bastion.search.job`)."""

# Terminal emulation is seconds of pure-Python CPU for a long session; in its own process, at the
# lowest priority (bastion.lowpriority), it never holds the gateway's interpreter lock and yields the
# CPU to live sessions. The clear text never leaves this process: it prints (JSON on stdout) the
# index key wrapped by the vault and the sealed entries, which the gateway stores.

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import RecordingError
from bastion.lowpriority import lower_priority
from bastion.recorder.reader import read_verified_lines, verify
from bastion.search import seal
from bastion.search.extract import extract_cast
from bastion.vault import Vault

USAGE = "usage: python -m bastion.search.job KEYS_DIR RECORDING SESSION_ID shell|exec NODE_PUBLIC_KEY_HEX"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build(keys_dir: Path, path: Path, session_id: str, kind: str, public: Ed25519PublicKey) -> dict[str, Any]:
    """The sealed entries of one recording; or status "unreadable" (index it as empty) or "error" (retry later)."""
    vault = Vault.load(keys_dir)
    try:
        report = verify(path, public)
    except RecordingError as exc:
        return {"status": "unreadable", "reason": exc.safe_message}
    if report.chunks and report.session_id != session_id:
        return {"status": "unreadable", "reason": "the recording file belongs to another session"}
    try:
        # Like iter_lines(force=True): the chunks that verify, then stop.
        lines = read_verified_lines(path, vault, report.chunks, force=True) if report.chunks else iter(())
        result = extract_cast(lines, commands=kind == "shell", crlf=kind != "shell")
    except RecordingError as exc:
        # The vault does not open it, or the file changed meanwhile: worth another try later.
        return {"status": "error", "reason": exc.safe_message}
    key = seal.new_key()
    entries = [[seal.COMMAND, found.offset,
                _b64(seal.seal(key, session_id, seal.COMMAND, found.offset, found.text.encode()))]
               for found in result.commands]
    entries += [[seal.OUTPUT, offset, _b64(seal.seal(key, session_id, seal.OUTPUT, offset, plaintext))]
                for offset, plaintext in seal.output_blocks(result.output)]
    return {"status": "ok", "wrapped_key": _b64(vault.wrap_key(key, seal.wrap_context(session_id))),
            "entries": entries, "events": result.events, "truncated": result.truncated,
            "skipped_chars": result.skipped_chars, "hidden_lines": result.hidden_lines,
            "verified": report.status}


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[3] not in ("shell", "exec"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        # Passed in rather than read from the key file: that needs bastion.keys, which loads asyncssh.
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(argv[4]))
    except ValueError:
        print(USAGE, file=sys.stderr)
        return 2
    lower_priority()  # yield the CPU to live sessions
    result = build(Path(argv[0]), Path(argv[1]), argv[2], argv[3], public)
    sys.stdout.write(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
