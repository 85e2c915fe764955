"""PROXY v2 parser: valid headers round-trip, every kind of garbage is a ProxyProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.proxyproto import (MAX_PAYLOAD_LEN, PREFIX_LEN, SIGNATURE, ProxyProtocolError, build_header,
                                header_length, parse_header)

V4 = build_header(("203.0.113.7", 4242), ("192.0.2.1", 8022))
V6 = build_header(("2001:db8::1", 55555), ("2001:db8::2", 8022))
LOCAL = build_header(None, None)


def _with(header: bytes, offset: int, value: int) -> bytes:
    return header[:offset] + bytes([value]) + header[offset + 1:]


def test_ipv4_header():
    parsed = parse_header(V4)
    assert parsed.source == ("203.0.113.7", 4242)
    assert parsed.destination == ("192.0.2.1", 8022)
    assert parsed.length == len(V4) == PREFIX_LEN + 12
    assert not parsed.is_local


def test_ipv6_header():
    parsed = parse_header(V6)
    assert parsed.source == ("2001:db8::1", 55555)
    assert parsed.destination == ("2001:db8::2", 8022)
    assert parsed.length == PREFIX_LEN + 36


def test_local_header_has_no_addresses():
    parsed = parse_header(LOCAL)
    assert parsed.is_local and parsed.source is None and parsed.destination is None


def test_local_ignores_family_and_address_block():
    # The spec says the receiver must discard a LOCAL header's protocol block, whatever it holds.
    header = SIGNATURE + bytes([0x20, 0x31]) + struct.pack("!H", 5) + b"xxxxx"
    assert parse_header(header).is_local


def test_tlvs_are_skipped_and_bytes_after_header_untouched():
    tlvs = bytes([0x04, 0x00, 0x03]) + b"abc" + bytes([0x05, 0x00, 0x00])
    header = build_header(("198.51.100.9", 1), ("192.0.2.1", 2), tlvs=tlvs)
    parsed = parse_header(header + b"SSH-2.0-x\r\n")
    assert parsed.source == ("198.51.100.9", 1)
    assert parsed.length == len(header)


def test_header_length_from_prefix():
    assert header_length(V4[:PREFIX_LEN]) == len(V4)


GARBAGE = {
    "empty": b"",
    "truncated prefix": V4[:10],
    "truncated addresses": V4[:-1],
    "truncated ipv6": V6[:PREFIX_LEN + 20],
    "bad signature": b"\r\n\r\n\x00\r\nQUIX\n" + V4[12:],
    "proxy v1 text": b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 8022\r\n",
    "version 1 nibble": _with(V4, 12, 0x11),
    "version 3": _with(V4, 12, 0x31),
    "unknown command": _with(V4, 12, 0x2F),
    "unspec family with PROXY": _with(V4, 13, 0x01),
    "unix family": _with(V4, 13, 0x31),
    "unknown family": _with(V4, 13, 0x71),
    "datagram transport": _with(V4, 13, 0x12),
    "unspec transport": _with(V4, 13, 0x10),
    "huge length": V4[:14] + struct.pack("!H", 0xFFFF) + V4[16:],
    "just over limit": V4[:14] + struct.pack("!H", MAX_PAYLOAD_LEN + 1) + V4[16:],
    "ipv6 family, ipv4-sized block": _with(V4, 13, 0x21),
    "truncated tlv head": build_header(("192.0.2.3", 1), ("192.0.2.1", 2), tlvs=b"\x04\x00"),
    "tlv past end": build_header(("192.0.2.3", 1), ("192.0.2.1", 2), tlvs=b"\x04\x00\x09abc"),
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_a_clear_error(data):
    with pytest.raises(ProxyProtocolError) as info:
        parse_header(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_largest_allowed_header_parses():
    tlvs = bytes([0x04]) + struct.pack("!H", MAX_PAYLOAD_LEN - 12 - 3) + b"p" * (MAX_PAYLOAD_LEN - 12 - 3)
    header = build_header(("192.0.2.3", 1), ("192.0.2.1", 2), tlvs=tlvs)
    assert parse_header(header).length == PREFIX_LEN + MAX_PAYLOAD_LEN


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data):
    try:
        parse_header(data)
    except ProxyProtocolError:
        pass


@settings(max_examples=500)
@given(st.binary(min_size=4, max_size=80))
def test_random_bytes_after_valid_signature_never_crash(tail):
    try:
        header = parse_header(SIGNATURE + tail)
    except ProxyProtocolError:
        return
    assert PREFIX_LEN <= header.length <= PREFIX_LEN + len(tail)


@settings(max_examples=200)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535))
def test_ipv4_round_trip(src, dst, sport, dport):
    parsed = parse_header(build_header((str(src), sport), (str(dst), dport)))
    assert parsed.source == (str(src), sport) and parsed.destination == (str(dst), dport)


@settings(max_examples=200)
@given(st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 65535))
def test_ipv6_round_trip(src, dst, sport, dport):
    parsed = parse_header(build_header((str(src), sport), (str(dst), dport)))
    assert parsed.source == (str(src), sport) and parsed.destination == (str(dst), dport)


@settings(max_examples=300)
@given(st.integers(0, len(V6) - 1))
def test_every_truncation_is_an_error(cut):
    with pytest.raises(ProxyProtocolError):
        parse_header(V6[:cut])
