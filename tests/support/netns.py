"""A client host of our own: a network namespace joined to this one by a veth pair with a chosen MAC."""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass

_ids = itertools.count(1)


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, no iproute2, or no CAP_NET_ADMIN)."""


def _ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


@dataclass
class ClientHost:
    """Namespace `name`; the bastion side of the link is `host_ip`, the client is `client_ip` with `mac`."""

    name: str
    host_if: str
    host_ip: str
    client_ip: str
    mac: str

    @classmethod
    def create(cls, mac: str) -> "ClientHost":
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        index = (os.getpid() % 200) * 8 + next(_ids) % 8
        subnet = f"10.{200 + index // 250}.{index % 250}"
        host = cls(f"bastion-c{os.getpid()}-{index}", f"bh{os.getpid() % 100000}x{index}", f"{subnet}.1",
                   f"{subnet}.2", mac)
        try:
            subprocess.run(["ip", "netns", "add", host.name], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
        try:
            peer = host.host_if + "c"
            _ip("link", "add", host.host_if, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.name)
            _ip("link", "set", peer, "address", mac, netns=host.name)
            _ip("addr", "add", f"{host.host_ip}/30", "dev", host.host_if)
            _ip("link", "set", host.host_if, "up")
            _ip("addr", "add", f"{host.client_ip}/30", "dev", peer, netns=host.name)
            _ip("link", "set", peer, "up", netns=host.name)
            _ip("link", "set", "lo", "up", netns=host.name)
        except subprocess.CalledProcessError as exc:
            host.close()
            raise NetnsUnavailable(f"cannot wire the namespace: {exc.stderr.decode(errors='replace')}") from None
        return host

    def prefix(self) -> list[str]:
        """Prepend to a command to run it on the client host."""
        return ["ip", "netns", "exec", self.name]

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
