"""Compile softsk.c into an OpenSSH SecurityKeyProvider .so with gcc, cached by source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("softsk.c")
CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
LIBS = ["-lcrypto"]


class ProviderUnavailable(RuntimeError):
    """The provider cannot be built here (no compiler, or no libcrypto headers: apt-get install gcc libssl-dev)."""


def _compiler() -> str:
    cc = os.environ.get("CC") or "gcc"
    path = shutil.which(cc) or (shutil.which("cc") if cc == "gcc" else None)
    if not path:
        raise ProviderUnavailable(f"no C compiler {cc!r} (apt-get install gcc)")
    return path


def build(out_dir: str | os.PathLike) -> Path:
    """Return the path of the built provider in out_dir, compiling only when source or flags changed."""
    cc = _compiler()
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + "\0".join([cc, *CFLAGS, *LIBS]).encode()).hexdigest()[:16]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"libbastion-softsk-{digest}.so"
    if target.exists():
        return target
    # Compile beside the target and rename, so concurrent builders never see a half-written library.
    fd, tmp = tempfile.mkstemp(prefix=".softsk-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        result = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            if "openssl/" in result.stderr and "No such file" in result.stderr:
                raise ProviderUnavailable("OpenSSL headers missing (apt-get install libssl-dev)")
            if "cannot find -lcrypto" in result.stderr:
                raise ProviderUnavailable("libcrypto missing (apt-get install libssl-dev)")
            raise RuntimeError(f"building the soft security key provider failed:\n{result.stderr}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
