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
    def create(cls, mac: str, ipv6: bool = False) -> "ClientHost":
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        index = (os.getpid() % 200) * 8 + next(_ids) % 8
        if ipv6:
            prefix = f"fd00:b5:{os.getpid() % 65536:x}:{index:x}"
            host_ip, client_ip, plen = f"{prefix}::1", f"{prefix}::2", 64
        else:
            subnet = f"10.{200 + index // 250}.{index % 250}"
            host_ip, client_ip, plen = f"{subnet}.1", f"{subnet}.2", 30
        host = cls(f"bastion-c{os.getpid()}-{index}", f"bh{os.getpid() % 100000}x{index}", host_ip, client_ip, mac)
        try:
            subprocess.run(["ip", "netns", "add", host.name], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
        try:
            peer = host.host_if + "c"
            _ip("link", "add", host.host_if, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.name)
            _ip("link", "set", peer, "address", mac, netns=host.name)
            # nodad: use the IPv6 addresses at once instead of after duplicate-address detection
            extra = ["nodad"] if ipv6 else []
            _ip("addr", "add", f"{host.host_ip}/{plen}", "dev", host.host_if, *extra)
            _ip("link", "set", host.host_if, "up")
            _ip("addr", "add", f"{host.client_ip}/{plen}", "dev", peer, *extra, netns=host.name)
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
