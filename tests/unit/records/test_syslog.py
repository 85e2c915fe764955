"""Syslog forwarding: RFC 5424 over TCP with octet counting (RFC 6587), TLS, and a receiver that is down."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import socket
import ssl
import time

from bastion.audit.events import AdminChange, AuthFailure
from bastion.audit.export import event_dict
from bastion.audit.syslog import SyslogForwarder, format_event
from bastion.keys import create_tls_material

FRAME_HEADER = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


class Receiver:
    """A tiny syslog receiver: octet-counted frames only (a stray byte would break the parse and fail the test)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port, ssl=ssl_context)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = await reader.readuntil(b" ")
                assert length[:-1].isdigit(), length
                self.frames.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                await asyncio.sleep(0.01)
        return self.frames

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def parse(frame: bytes) -> dict:
    header = FRAME_HEADER.match(frame)
    assert header, frame[:80]
    rest = frame[header.end():]
    sd, _, message = rest.partition(b" \xef\xbb\xbf")
    pri = int(header.group(1))
    return {"facility": pri // 8, "severity": pri % 8, "timestamp": header.group(2).decode(),
            "hostname": header.group(3).decode(), "app": header.group(4).decode(), "procid": header.group(5).decode(),
            "msgid": header.group(6).decode(), "sd": sd.decode(), "msg": json.loads(message)}


async def started(forwarder: SyslogForwarder, services) -> SyslogForwarder:
    forwarder.attach(services.audit)
    await forwarder.start()
    return forwarder


async def test_events_arrive_as_rfc5424_octet_counted_frames(services):
    receiver = Receiver()
    port = await receiver.start()
    forwarder = await started(SyslogForwarder("127.0.0.1", port, hostname="node test"), services)
    try:
        first = await services.audit.emit(AdminChange(actor="tester", action="user.add", object="alice"))
        second = await services.audit.emit(AuthFailure(actor='mallory"]\\', source="10.0.0.9", method="password",
                                                       reason="wrong\nsecret-free"))
        frames = await receiver.wait_for(2)
    finally:
        await forwarder.stop()
        await receiver.close()
    one, two = parse(frames[0]), parse(frames[1])
    assert (one["facility"], one["severity"], two["severity"]) == (13, 5, 4)  # log audit; notice; warning
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", one["timestamp"])
    assert one["hostname"] == "node_test" and one["app"] == "bastion" and one["procid"].isdigit()
    assert (one["msgid"], two["msgid"]) == ("admin.user.add", "auth.failure")
    assert one["msg"] == event_dict(first) and two["msg"] == event_dict(second)
    assert f'seq="{first.seq}" hash="{first.hash}"' in one["sd"] and one["sd"].startswith("[bastion@32473 ")
    assert 'actor="mallory\\"\\]\\\\"' in two["sd"]  # SD-PARAM escaping of ", ] and \
    assert forwarder.sent == 2 and forwarder.dropped == 0


async def test_tls_with_a_self_signed_certificate(services, tmp_path):
    cert, key = create_tls_material(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    receiver = Receiver()
    port = await receiver.start(ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    forwarder = await started(SyslogForwarder("127.0.0.1", port, ssl_context=client_context, hostname="n"), services)
    try:
        row = await services.audit.emit(AdminChange(actor="tester", action="user.add", object="tls"))
        frames = await receiver.wait_for(1)
    finally:
        await forwarder.stop()
        await receiver.close()
    assert parse(frames[0])["msg"] == event_dict(row) and forwarder.tls


async def test_tls_to_an_untrusted_receiver_sends_nothing(services, tmp_path):
    cert, key = create_tls_material(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    receiver = Receiver()
    port = await receiver.start(ssl_context=server_context)
    forwarder = await started(SyslogForwarder("127.0.0.1", port, tls=True, hostname="n", max_backoff=0.1), services)
    try:
        await services.audit.emit(AdminChange(actor="tester", action="user.add", object="x"))
        await asyncio.sleep(0.5)
    finally:
        await forwarder.stop(timeout=0.1)
        await receiver.close()
    assert receiver.frames == [] and forwarder.connects == 0 and forwarder.pending == 1


async def test_a_dead_receiver_never_blocks_emit_and_drops_are_counted_then_reported(services):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens here (yet)
    forwarder = await started(SyslogForwarder("127.0.0.1", port, hostname="n", queue_size=5, max_backoff=0.1,
                                              connect_timeout=1.0), services)
    receiver = Receiver()
    try:
        began = time.monotonic()
        rows = [await services.audit.emit(AdminChange(actor="tester", action="user.add", object=f"u{i}"))
                for i in range(20)]
        assert time.monotonic() - began < 10
        assert forwarder.pending == 5 and forwarder.dropped == 15 and forwarder.sent == 0
        forwarder.submit(object())  # a listener never raises into emit(), whatever it is handed
        assert forwarder.dropped == 16
        await receiver.start(port)  # the receiver comes back: queued events, then a note of the drops
        frames = [parse(f) for f in await receiver.wait_for(6)]
        later = await services.audit.emit(AdminChange(actor="tester", action="user.add", object="later"))
        frames.append(parse((await receiver.wait_for(7))[6]))
    finally:
        await forwarder.stop()
        await receiver.close()
    assert frames[0]["msgid"] == "syslog.dropped" and frames[0]["msg"] == {"dropped": 16, "total_dropped": 16}
    assert [f["msg"]["seq"] for f in frames[1:6]] == [r.seq for r in rows[:5]]
    assert frames[6]["msg"]["seq"] == later.seq and forwarder.connects == 1


def test_format_event_is_one_message_without_raw_newlines():
    class Row:
        seq, type, actor, source, target, session_id, node = 7, "auth.failure", "a\nb", "s", "t", "", "n"
        outcome, details = "failure", {"reason": "line1\nline2"}
        prev_hash, hash = "0" * 64, "1" * 64
        ts = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)

    message = format_event(Row, "host")
    assert b"\n" not in message and message.startswith(b"<108>1 2026-11-28T00:00:00.000000Z host bastion ")
