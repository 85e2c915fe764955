"""Security-key signature parsing and MAC address handling."""

import struct

import pytest
from hypothesis import given, strategies as st

from bastion.auth.neighbours import normalise_mac, peer_mac
from bastion.auth.skkeys import parse_sk_signature


def blob(alg=b"sk-ssh-ed25519@openssh.com", sig=b"s" * 64, flags=0x05, counter=7, extra=b""):
    return (struct.pack(">I", len(alg)) + alg + struct.pack(">I", len(sig)) + sig + bytes([flags])
            + struct.pack(">I", counter) + extra)


def test_flags_and_counter_are_read():
    assertion = parse_sk_signature(blob(flags=0x05, counter=4242))
    assert assertion.user_present and assertion.user_verified and assertion.counter == 4242
    assert not parse_sk_signature(blob(flags=0x01)).user_verified


@pytest.mark.parametrize("bad", [b"", blob(alg=b"ssh-ed25519"), blob()[:-1], blob(extra=b"x"), b"\xff" * 12])
def test_malformed_signatures_are_refused(bad):
    with pytest.raises(ValueError):
        parse_sk_signature(bad)


@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    try:
        parse_sk_signature(data)
    except ValueError:
        pass


@pytest.mark.parametrize("text, mac", [("02:42:AC:11:00:02", "02:42:ac:11:00:02"), ("02-42-ac-11-00-02", "02:42:ac:11:00:02"),
                                       ("0242.ac11.0002", "02:42:ac:11:00:02")])
def test_macs_are_normalised(text, mac):
    assert normalise_mac(text) == mac


@pytest.mark.parametrize("bad", ["", "02:42:ac:11:00", "zz:42:ac:11:00:02", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff",
                                 "00:00:00:00:00:00", "02:42:ac:11:00:02; rm -rf /", "02:42:ac:11:00:02:03"])
def test_bad_macs_are_refused(bad):
    with pytest.raises(ValueError):
        normalise_mac(bad)


async def test_loopback_and_garbage_peers_have_no_mac():
    assert await peer_mac("127.0.0.1") is None
    assert await peer_mac("::1") is None
    assert await peer_mac("not-an-address; id") is None
