"""Downloads a big published dataset through the real `sftp` client and prints the gateway's memory and speed.

A fresh data directory, the gateway as a subprocess (`bastion serve`), a dataset of distinct 1 MiB blocks
streamed into the encrypted blob store, then `sftp get` from `USER#datasets` while /proc/PID/status VmRSS of
the gateway is sampled every 20 ms. Run: `.venv/bin/python -m bench.dataset_download [--size-mib 1024]`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bastion.datadir import init_data_dir  # noqa: E402
from bastion.publish.catalog import Catalog  # noqa: E402
from tests.support.clients import Login, sftp  # noqa: E402
from tests.support.gateway import Directory, GatewayProcess  # noqa: E402
from tests.support.memory import MiB, RssSampler, file_sha256, status_kib, timed, write_big_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the dataset file (MiB)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="bastion-bench-dl-") as scratch:
        work = Path(scratch)
        data_dir = work / "data"
        asyncio.run(init_data_dir(data_dir, listen="127.0.0.1:0"))
        key = work / "id_bench"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        directory = Directory(data_dir)
        gateway = GatewayProcess(data_dir).start()
        try:
            directory.admin().add_user("bench", ssh_keys=[key.with_suffix(".pub").read_text()])
            source = work / "big.bin"
            digest, wrote = timed(write_big_file, source, size)
            catalog = Catalog.from_services(directory.services, actor="bench")
            _, stored = timed(directory.run, catalog.add("big", str(source)), 3600)
            source.unlink()
            directory.run(catalog.publish("big"))
            directory.run(catalog.grant("big", user="bench", mode="download"))
            local = work / "got.bin"
            pid = gateway.process.pid
            with RssSampler(pid) as rss:
                result, seconds = timed(sftp, gateway.port, Login("bench", key=key), "bench#datasets",
                                        f"get /big/big.bin {local}\n", timeout=3600)
            if result.returncode != 0:
                print(result.stderr.decode(errors="replace"), file=sys.stderr)
                return 1
            ok = local.stat().st_size == size and file_sha256(local) == digest
            hwm = status_kib(pid, "VmHWM") / 1024
        finally:
            gateway.stop()
            directory.close()
    print(f"dataset of {args.size_mib} MiB: written in {wrote:.1f} s, stored (encrypted) in {stored:.1f} s")
    print(f"sftp get through the gateway: {seconds:.1f} s, {size / MiB / seconds:.0f} MiB/s, "
          f"content {'identical' if ok else 'DIFFERENT'}")
    print(f"gateway RSS: {rss.baseline / MiB:.0f} MiB before, peak {rss.peak / MiB:.0f} MiB during "
          f"(growth {rss.growth / MiB:.1f} MiB, {rss.samples} samples every 20 ms); VmHWM {hwm:.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
