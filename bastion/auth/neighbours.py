"""The MAC address of an on-link peer, from the kernel neighbour table (IPv4 ARP and IPv6 ND)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LOOKUP_TIMEOUT = 2.0


def normalise_mac(text: str) -> str:
    """aa:bb:cc:dd:ee:ff in lower case; accepts '-' or no separators; ValueError otherwise."""
    raw = re.sub(r"[^0-9a-fA-F]", "", text or "")
    if len(raw) != 12 or len(re.sub(r"[0-9a-fA-F:\-.]", "", text)) != 0:
        raise ValueError(f"not a MAC address: {text[:40]!r}")
    mac = ":".join(raw[i:i + 2] for i in range(0, 12, 2)).lower()
    if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") or int(raw[:2], 16) & 1:
        raise ValueError(f"not a unicast MAC address: {text[:40]!r}")
    return mac


async def peer_mac(address: str) -> str | None:
    """The peer's MAC when it is on a directly attached segment; None when unknown (routed, loopback)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    tool = shutil.which("ip")
    if tool is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(tool, "-j", "neigh", "show", "to", str(ip),
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(process.communicate(), LOOKUP_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        entries = json.loads(out or b"[]")
    except ValueError:
        return None
    for entry in entries:
        states = set(entry.get("state") or ())
        if entry.get("dst") == str(ip) and entry.get("lladdr") and not states & {"FAILED", "INCOMPLETE"}:
            mac = str(entry["lladdr"]).lower()
            return mac if MAC.fullmatch(mac) else None
    return None
