"""A private OpenSSH sshd on a loopback port: the demo target, and the target of tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                          "/usr/lib/ssh/sftp-server")


def find_sshd() -> str | None:
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LocalSshd:
    """sshd with its own config, host key and authorized keys under `directory`; stopped by PID."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_config: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def host_key_pub(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    def authorized_keys(self, login: str) -> Path:
        return self.directory / "authorized_keys" / login

    def authorize(self, login: str, public_key: str) -> None:
        path = self.authorized_keys(login)
        with open(path, "a", encoding="ascii") as handle:
            handle.write(public_key.strip() + "\n")
        os.chmod(path, 0o644)

    def start(self, timeout: float = 10.0) -> "LocalSshd":
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError("sshd not found: install openssh-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        # The target user reads authorized_keys itself, so every directory on the way must be traversable.
        os.chmod(self.directory, 0o755)
        (self.directory / "authorized_keys").mkdir(exist_ok=True)
        os.chmod(self.directory / "authorized_keys", 0o755)
        key = self.directory / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "target", "-f", str(key)],
                           check=True, capture_output=True)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        sftp = next((p for p in SFTP_SERVER_CANDIDATES if os.access(p, os.X_OK)), "internal-sftp")
        last_error = ""
        for _ in range(5):
            port = self.port or free_port(self.host)
            config = self.directory / "sshd_config"
            config.write_text("\n".join([
                f"Port {port}", f"ListenAddress {self.host}", f"HostKey {key}",
                f"PidFile {self.directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.directory / 'authorized_keys'}/%u",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                "UsePAM no", "PermitRootLogin prohibit-password", "StrictModes no", "PrintMotd no",
                "PrintLastLog no", "AcceptEnv LANG LC_*", "AllowTcpForwarding yes", "MaxStartups 200:30:400",
                "MaxSessions 100", f"Subsystem sftp {sftp}", "LogLevel VERBOSE", *self.extra_config, ""]))
            log = open(self.directory / "sshd.log", "ab")
            self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    with socket.create_connection((self.host, port), timeout=0.5) as probe:
                        probe.settimeout(2)
                        if probe.recv(4) == b"SSH-":
                            self.port = port
                            return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
            last_error = (self.directory / "sshd.log").read_text(errors="replace")[-500:]
            if self.port:
                break
        raise RuntimeError(f"sshd did not start: {last_error}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> "LocalSshd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
