"""PROXY protocol v2 header parser (pure: bytes in, ProxyHeader or ProxyProtocolError out)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_LEN = 16  # signature, version/command, family/transport, payload length
# Addresses are 12 (IPv4) or 36 (IPv6) bytes; the rest is TLVs. Real load balancers send a few
# hundred bytes at most, and a bound keeps a broken or hostile sender from making us buffer 64 KiB.
MAX_PAYLOAD_LEN = 2048
MAX_HEADER_LEN = PREFIX_LEN + MAX_PAYLOAD_LEN

VERSION = 0x2
CMD_LOCAL = 0x0
CMD_PROXY = 0x1
FAMILY_UNSPEC = 0x0
FAMILY_INET = 0x1
FAMILY_INET6 = 0x2
TRANSPORT_STREAM = 0x1

_ADDRESS_LEN = {FAMILY_INET: 12, FAMILY_INET6: 36}
_TLV_HEAD_LEN = 3


class ProxyProtocolError(ValueError):
    """The bytes are not a PROXY v2 header this gateway accepts (message names the reason)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header; `source`/`destination` are None for LOCAL (use the socket's own peer)."""

    command: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes the header occupies on the wire, prefix included

    @property
    def is_local(self) -> bool:
        return self.command == CMD_LOCAL


def header_length(prefix: bytes) -> int:
    """Validate the fixed 16-byte prefix and return the whole header's length (prefix included)."""
    if len(prefix) < PREFIX_LEN:
        raise ProxyProtocolError(f"truncated header: {len(prefix)} of {PREFIX_LEN} prefix bytes")
    if prefix[:12] != SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 header (bad signature)")
    version, command = prefix[12] >> 4, prefix[12] & 0x0F
    if version != VERSION:
        raise ProxyProtocolError(f"unsupported PROXY protocol version {version}")
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise ProxyProtocolError(f"unknown PROXY command {command}")
    (payload_len,) = struct.unpack_from("!H", prefix, 14)
    if payload_len > MAX_PAYLOAD_LEN:
        raise ProxyProtocolError(f"header too long: {payload_len} bytes (limit {MAX_PAYLOAD_LEN})")
    return PREFIX_LEN + payload_len


def parse_header(data: bytes) -> ProxyHeader:
    """Parse one header at the start of `data`; bytes after `ProxyHeader.length` are not looked at."""
    total = header_length(data[:PREFIX_LEN])
    if len(data) < total:
        raise ProxyProtocolError(f"truncated header: {len(data)} of {total} bytes")
    command = data[12] & 0x0F
    if command == CMD_LOCAL:
        # The spec says a receiver must ignore the family and address block of a LOCAL header
        # (a load balancer's own health check): the real socket endpoints apply.
        return ProxyHeader(CMD_LOCAL, None, None, total)
    family, transport = data[13] >> 4, data[13] & 0x0F
    if family not in _ADDRESS_LEN:
        raise ProxyProtocolError(f"unsupported address family {family} (only INET and INET6)")
    if transport != TRANSPORT_STREAM:
        raise ProxyProtocolError(f"unsupported transport {transport} (only STREAM)")
    payload = data[PREFIX_LEN:total]
    address_len = _ADDRESS_LEN[family]
    if len(payload) < address_len:
        raise ProxyProtocolError(f"address block too short: {len(payload)} of {address_len} bytes")
    if family == FAMILY_INET:
        src, dst = ipaddress.IPv4Address(payload[0:4]), ipaddress.IPv4Address(payload[4:8])
        sport, dport = struct.unpack_from("!HH", payload, 8)
    else:
        src, dst = ipaddress.IPv6Address(payload[0:16]), ipaddress.IPv6Address(payload[16:32])
        sport, dport = struct.unpack_from("!HH", payload, 32)
    _check_tlvs(payload[address_len:])
    return ProxyHeader(CMD_PROXY, (str(src), sport), (str(dst), dport), total)


def _check_tlvs(tlvs: bytes) -> None:
    # TLVs carry nothing we use, but a frame that does not add up means the sender and we
    # disagree about the header, so refuse rather than guess where the stream starts.
    offset = 0
    while offset < len(tlvs):
        if len(tlvs) - offset < _TLV_HEAD_LEN:
            raise ProxyProtocolError("truncated TLV header")
        (value_len,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += _TLV_HEAD_LEN + value_len
        if offset > len(tlvs):
            raise ProxyProtocolError("TLV runs past the end of the header")


def build_header(source: tuple[str, int] | None, destination: tuple[str, int] | None,
                 tlvs: bytes = b"") -> bytes:
    """Encode a v2 STREAM header (PROXY, or LOCAL when both addresses are None); for tests and tools."""
    if source is None and destination is None:
        head = bytes([VERSION << 4 | CMD_LOCAL, FAMILY_UNSPEC << 4])
        return SIGNATURE + head + struct.pack("!H", len(tlvs)) + tlvs
    if source is None or destination is None:
        raise ValueError("give both addresses, or neither for LOCAL")
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same address family")
    family = FAMILY_INET if src.version == 4 else FAMILY_INET6
    payload = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return (SIGNATURE + bytes([VERSION << 4 | CMD_PROXY, family << 4 | TRANSPORT_STREAM])
            + struct.pack("!H", len(payload)) + payload)
