"""The SFTP filter: writes refused at the protocol level under sftp-read, transfers accounted."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from bastion.sessions import sftpfilter as f


def packet(kind, *parts):
    body = bytes([kind]) + b"".join(parts)
    return struct.pack(">I", len(body)) + body


def u32(n):
    return struct.pack(">I", n)


def s(data):
    return u32(len(data)) + data


def open_req(rid, path, pflags):
    return packet(f.FXP_OPEN, u32(rid), s(path), u32(pflags), u32(0))


def status_code(reply):
    _, kind, rid, code = struct.unpack_from(">IBII", reply)
    assert kind == f.FXP_STATUS
    return rid, code


def make(read=True, write=True):
    events = {"transfers": [], "denied": []}
    flt = f.SftpFilter(read, write, lambda d, p, n: events["transfers"].append((d, p, n)),
                       lambda op, p: events["denied"].append((op, p)))
    return flt, events


@pytest.mark.parametrize("request_bytes", [
    open_req(1, b"/tmp/x", f.PF_WRITE | f.PF_CREAT | f.PF_TRUNC),
    open_req(1, b"/tmp/x", f.PF_READ | f.PF_APPEND),
    packet(f.FXP_REMOVE, u32(1), s(b"/tmp/x")),
    packet(f.FXP_MKDIR, u32(1), s(b"/tmp/d"), u32(0)),
    packet(f.FXP_RMDIR, u32(1), s(b"/tmp/d")),
    packet(f.FXP_RENAME, u32(1), s(b"/a"), s(b"/b")),
    packet(f.FXP_SETSTAT, u32(1), s(b"/a"), u32(0)),
    packet(f.FXP_SYMLINK, u32(1), s(b"/a"), s(b"/b")),
    packet(f.FXP_EXTENDED, u32(1), s(b"posix-rename@openssh.com"), s(b"/a"), s(b"/b")),
    packet(f.FXP_EXTENDED, u32(1), s(b"hardlink@openssh.com"), s(b"/a"), s(b"/b")),
])
def test_read_only_refuses_every_write_locally(request_bytes):
    flt, events = make(read=True, write=False)
    forward, answer = flt.from_user(request_bytes)
    assert forward == b""
    assert status_code(answer) == (1, f.FX_PERMISSION_DENIED)
    assert events["denied"]


def test_write_on_a_handle_is_refused_under_read_only():
    flt, _ = make(read=True, write=False)
    forward, answer = flt.from_user(packet(f.FXP_WRITE, u32(7), s(b"h"), struct.pack(">Q", 0), s(b"data")))
    assert forward == b"" and status_code(answer) == (7, f.FX_PERMISSION_DENIED)


def test_write_only_refuses_reads():
    flt, _ = make(read=False, write=True)
    forward, answer = flt.from_user(open_req(3, b"/etc/passwd", f.PF_READ))
    assert forward == b"" and status_code(answer) == (3, f.FX_PERMISSION_DENIED)


def test_unknown_extension_is_unsupported_not_forwarded():
    flt, _ = make()
    forward, answer = flt.from_user(packet(f.FXP_EXTENDED, u32(9), s(b"evil@example.com")))
    assert forward == b"" and status_code(answer) == (9, f.FX_OP_UNSUPPORTED)


def test_download_is_accounted_by_bytes_returned():
    flt, events = make(read=True, write=False)
    init = packet(f.FXP_INIT, u32(3))
    forward, answer = flt.from_user(init + open_req(1, b"/etc/hostname", f.PF_READ))
    assert answer == b"" and forward.endswith(open_req(1, b"/etc/hostname", f.PF_READ))
    flt.from_target(packet(f.FXP_HANDLE, u32(1), s(b"H1")))
    flt.from_user(packet(f.FXP_READ, u32(2), s(b"H1"), struct.pack(">Q", 0), u32(32768)))
    # the target's reply may arrive split across SSH packets
    reply = packet(f.FXP_DATA, u32(2), s(b"x" * 1000))
    assert flt.from_target(reply[:3]) == b""
    assert flt.from_target(reply[3:]) == reply
    flt.from_user(packet(f.FXP_CLOSE, u32(4), s(b"H1")))
    assert events["transfers"] == [("download", "/etc/hostname", 1000)]


def test_upload_is_accounted_and_open_handles_reported_at_finish():
    flt, events = make()
    flt.from_user(open_req(1, b"/tmp/up", f.PF_WRITE | f.PF_CREAT))
    flt.from_target(packet(f.FXP_HANDLE, u32(1), s(b"H")))
    flt.from_user(packet(f.FXP_WRITE, u32(2), s(b"H"), struct.pack(">Q", 0), s(b"abc")))
    flt.finish()
    assert events["transfers"] == [("upload", "/tmp/up", 3)]


@pytest.mark.parametrize("garbage", [u32(0) + b"\x01", u32(f.MAX_PACKET + 1) + b"\x03",
                                     packet(f.FXP_OPEN, u32(1), u32(999)), packet(f.FXP_READ, u32(1))])
def test_malformed_requests_raise_protocol_error(garbage):
    flt, _ = make()
    with pytest.raises(f.SftpProtocolError):
        flt.from_user(garbage)


def test_unknown_packet_type_gets_bad_message():
    flt, _ = make()
    forward, answer = flt.from_user(packet(77, u32(5)))
    assert forward == b"" and status_code(answer) == (5, f.FX_BAD_MESSAGE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_and_never_forward_a_write_under_read_only(data):
    flt, _ = make(read=True, write=False)
    try:
        forward, _ = flt.from_user(data)
    except f.SftpProtocolError:
        return
    offset = 0
    while offset + 5 <= len(forward):
        (length,) = struct.unpack_from(">I", forward, offset)
        kind = forward[offset + 4]
        assert kind not in f.WRITES
        if kind == f.FXP_OPEN:
            _, end = f._string(forward[offset + 4:offset + 4 + length], 5)
            (pflags,) = struct.unpack_from(">I", forward, offset + 4 + end)
            assert not pflags & (f.PF_WRITE | f.PF_APPEND | f.PF_CREAT | f.PF_TRUNC)
        offset += 4 + length


def test_client_version_is_pinned_to_3_and_other_target_versions_are_refused():
    flt, _ = make()
    forward, _ = flt.from_user(packet(f.FXP_INIT, u32(6)))
    assert forward == packet(f.FXP_INIT, u32(3))
    assert flt.from_target(packet(f.FXP_VERSION, u32(3))) == packet(f.FXP_VERSION, u32(3))
    flt, _ = make()
    with pytest.raises(f.SftpProtocolError):
        flt.from_target(packet(f.FXP_VERSION, u32(6)))


@pytest.mark.parametrize("reply", [packet(f.FXP_DATA, u32(2)), packet(f.FXP_DATA, u32(2), u32(99)),
                                   packet(f.FXP_HANDLE, u32(1)), packet(f.FXP_STATUS)])
def test_malformed_target_replies_are_protocol_errors_not_crashes(reply):
    flt, _ = make()
    flt.from_user(open_req(1, b"/x", f.PF_READ))
    flt.from_target(packet(f.FXP_HANDLE, u32(1), s(b"H")))
    flt.from_user(packet(f.FXP_READ, u32(2), s(b"H"), struct.pack(">Q", 0), u32(10)))
    with pytest.raises(f.SftpProtocolError):
        flt.from_target(reply)


def _split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=6), cuts=st.lists(st.integers(0, 1 << 20)))
def test_download_replies_pass_unchanged_and_counted_however_they_are_split(sizes, cuts):
    flt, events = make(read=True, write=False)
    flt.from_user(open_req(1, b"/srv/big", f.PF_READ))
    flt.from_target(packet(f.FXP_HANDLE, u32(1), s(b"H1")))
    replies = b""
    for n, size in enumerate(sizes):
        flt.from_user(packet(f.FXP_READ, u32(10 + n), s(b"H1"), struct.pack(">Q", 0), u32(size)))
        replies += packet(f.FXP_DATA, u32(10 + n), s(bytes([n]) * size))
    replies += packet(f.FXP_STATUS, u32(99), u32(1), s(b"EOF"), s(b"en"))
    out = b"".join(flt.from_target(piece) for piece in _split(replies, cuts))
    flt.from_user(packet(f.FXP_CLOSE, u32(100), s(b"H1")))
    assert out == replies
    assert events["transfers"] == [("download", "/srv/big", sum(sizes))]


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 1 << 20)),
       may_write=st.booleans())
def test_uploads_are_forwarded_or_refused_whole_however_they_are_split(sizes, cuts, may_write):
    flt, events = make(read=True, write=may_write)
    init = packet(f.FXP_INIT, u32(6))
    # Under read-only the handle is opened for reading: writes to it are refused all the same.
    opening = open_req(1, b"/srv/up", (f.PF_WRITE | f.PF_CREAT) if may_write else f.PF_READ)
    forward, answers = flt.from_user(init + opening)
    assert answers == b"" and forward == packet(f.FXP_INIT, u32(3)) + opening
    flt.from_target(packet(f.FXP_VERSION, u32(3)) + packet(f.FXP_HANDLE, u32(1), s(b"H2")))
    writes = b"".join(packet(f.FXP_WRITE, u32(10 + n), s(b"H2"), struct.pack(">Q", 0), s(bytes([n]) * size))
                      for n, size in enumerate(sizes))
    closing = packet(f.FXP_CLOSE, u32(200), s(b"H2"))
    forward, answers = b"", b""
    for piece in _split(writes + closing, cuts):
        sent, answer = flt.from_user(piece)
        forward, answers = forward + sent, answers + answer
    if may_write:
        assert forward == writes + closing and answers == b""
        assert events["transfers"] == [("upload", "/srv/up", sum(sizes))]
    else:
        assert forward == closing
        replies, offset = [], 0
        while offset < len(answers):
            replies.append(status_code(answers[offset:]))
            offset += 4 + struct.unpack_from(">I", answers, offset)[0]
        assert replies == [(10 + n, f.FX_PERMISSION_DENIED) for n in range(len(sizes))]
        assert events["denied"] == [("write", "/srv/up")] * len(sizes)
        assert events["transfers"] == [("download", "/srv/up", 0)]


def test_whole_replies_pass_without_a_copy():
    # At bulk rates every copy of the stream costs the relay: whole packets go on as the same object.
    flt, _ = make(read=True, write=False)
    flt.from_user(open_req(1, b"/srv/big", f.PF_READ))
    flt.from_target(packet(f.FXP_HANDLE, u32(1), s(b"H1")))
    flt.from_user(packet(f.FXP_READ, u32(2), s(b"H1"), struct.pack(">Q", 0), u32(4096)))
    reply = packet(f.FXP_DATA, u32(2), s(b"d" * 4096))
    assert flt.from_target(reply) is reply
    upload, _ = make()
    write = packet(f.FXP_WRITE, u32(3), s(b"H"), struct.pack(">Q", 0), s(b"u" * 4096))
    assert upload.from_user(write)[0] is write
    handed_on = upload.from_user(bytearray(write))[0]  # a caller's mutable buffer is never passed on
    assert type(handed_on) is bytes and handed_on == write
