"""Export a recording as a plain asciicast v2 file, refusing (or marking) one that does not verify."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Iterator, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import RecordingError
from bastion.recorder.reader import VerifyReport, read_verified_lines, verify
from bastion.vault import Vault

VERIFICATION_FIELD = "bastion_verification"
_FALLBACK_HEADER = {"version": 2, "width": 80, "height": 24}


def export_cast(path: str | os.PathLike[str], out_path: str | os.PathLike[str], vault: Vault,
                node_public_key: Ed25519PublicKey, force: bool = False) -> VerifyReport:
    """Verify `path` (with the vault, so an altered chunk is named exactly), then write `out_path`.

    A recording that does not verify is refused with RecordingError naming the first bad chunk,
    unless `force`: then the verifiable prefix is written, the header gets
    "bastion_verification": "FAILED: ..." and a marker event says where the trusted part ends.
    The export is clear text, so it is created 0600 and appears atomically.
    """
    report = verify(path, node_public_key, vault=vault)
    if report.session_id is None:  # not even a readable preamble: nothing to export, even forced
        raise RecordingError(f"recording not exported: {report.reason}")
    if not report.ok and not force:
        raise RecordingError(f"recording not exported: verification failed: {report.describe()}")
    out_path = Path(out_path)
    partial = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RecordingError(f"export cannot be written ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            lines = read_verified_lines(path, vault, report.chunks, force=force) if report.chunks else iter(())
            if report.ok:
                for line in lines:
                    out.write(line + "\n")
            else:
                _write_marked(out, lines, report)
        os.replace(partial, out_path)
    except BaseException as exc:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise RecordingError(f"export cannot be written ({exc.strerror})") from None
        raise
    return report


def _write_marked(out: TextIO, lines: Iterator[str], report: VerifyReport) -> None:
    notice = f"FAILED: {report.describe()}"
    first = next(lines, None)
    try:
        header = json.loads(first) if first is not None else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("version") != 2:
        header = dict(_FALLBACK_HEADER)  # nothing verified: say so in an otherwise empty cast
    header[VERIFICATION_FIELD] = notice
    out.write(json.dumps(header, ensure_ascii=False) + "\n")
    last = None
    for line in lines:
        out.write(line + "\n")
        last = line
    end_time = 0.0
    if last is not None:
        try:
            end_time = float(json.loads(last)[0])
        except (json.JSONDecodeError, TypeError, ValueError, IndexError, KeyError):
            pass
    marker = [end_time, "m", f"bastion: verification {notice}; nothing after this point can be trusted"]
    out.write(json.dumps(marker, ensure_ascii=False) + "\n")
