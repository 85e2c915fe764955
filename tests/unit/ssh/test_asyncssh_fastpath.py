"""asyncssh_fastpath: packets are described only when packet logging is on, and keepalives go out
exactly when asyncssh's own timer would send them, without a new timer for every read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time

import asyncssh
import pytest
import uvloop
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.packet import SSHPacketLogger, String

from bastion.ssh import asyncssh_fastpath

asyncssh_fastpath.install()


# --- packet logging ---------------------------------------------------------------------------

class _Described(SSHPacketLogger):
    _handler_names = {94: "MSG_CHANNEL_DATA"}

    @property
    def logger(self):
        return asyncssh.logging.logger


class _Undescribable:
    """A packet that fails as soon as anything tries to describe it."""

    def __len__(self) -> int:
        raise AssertionError("the packet was described although packet logging is off")


@pytest.fixture
def packet_level():
    yield lambda: asyncssh.set_debug_level(asyncssh_fastpath.PACKET_LOG_LEVEL)
    asyncssh.set_debug_level(1)  # asyncssh's default


def test_packets_are_not_described_while_packet_logging_is_off(packet_level):
    for level in (1, 2):
        asyncssh.set_debug_level(level)
        _Described().log_sent_packet(94, 7, _Undescribable())
        _Described().log_received_packet(94, 7, _Undescribable())


def test_packets_are_logged_as_before_at_packet_level(packet_level, caplog):
    packet_level()
    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        _Described().log_sent_packet(94, 7, b"abc")
    assert "Sent MSG_CHANNEL_DATA (94), 3 bytes" in caplog.text
    with pytest.raises(AssertionError):  # at packet level the original describes the packet
        _Described().log_sent_packet(94, 7, _Undescribable())


# --- keepalive: asyncssh's timer functions on a clock the test moves ---------------------------

class _Timer:
    def __init__(self, when: float, callback):
        self._when, self.callback, self.cancelled = when, callback, False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    def __init__(self):
        self.now, self.timers, self.armed = 0.0, [], 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback) -> _Timer:
        return self.call_at(self.now + delay, callback)

    def call_at(self, when: float, callback) -> _Timer:
        self.armed += 1
        timer = _Timer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, to: float) -> None:
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when() <= to]
            if not due:
                break
            timer = min(due, key=_Timer.when)
            self.timers.remove(timer)
            self.now = timer.when()
            timer.callback()
        self.now = to


class _Connection:
    """Just what asyncssh's keepalive methods touch, with those methods taken from SSHConnection."""

    def __init__(self, clock: _Clock, interval: float, count_max: int):
        self._loop, self._keepalive_interval, self._keepalive_count_max = clock, interval, count_max
        self._keepalive_count, self._keepalive_timer, self._auth_complete = 0, None, True
        self.events: list[tuple[str, float]] = []
        for name in ("_set_keepalive_timer", "_cancel_keepalive_timer", "_reset_keepalive_timer",
                     "_keepalive_timer_callback"):
            setattr(self, name, getattr(SSHConnection, name).__get__(self))

    def is_client(self) -> bool:
        return False

    async def _make_keepalive_request(self) -> None:
        pass

    def create_task(self, coroutine) -> None:
        coroutine.close()
        self.events.append(("keepalive", round(self._loop.time(), 6)))

    def connection_lost(self, exc) -> None:
        self.events.append(("lost", round(self._loop.time(), 6)))
        self._cancel_keepalive_timer()

    def read_at(self, when: float) -> None:
        self._loop.advance(when)
        self._reset_keepalive_timer()  # what asyncssh does on every read from the socket


def test_reads_move_the_keepalive_without_a_timer_each():
    clock = _Clock()
    conn = _Connection(clock, interval=1.0, count_max=2)
    conn._set_keepalive_timer()  # login complete at 0
    armed = clock.armed
    for when in (0.3, 0.6, 0.9, 1.2):
        conn.read_at(when)
    assert clock.armed - armed == 1  # only the timer set at 0 firing early and waiting for 1.9
    clock.advance(10)
    # asyncssh's rule: due one interval after the last read; then one check per interval.
    assert conn.events == [("keepalive", 2.2), ("keepalive", 3.2), ("lost", 4.2)]


def test_a_read_after_a_keepalive_moves_the_next_check_and_keeps_the_count():
    clock = _Clock()
    conn = _Connection(clock, interval=1.0, count_max=2)
    conn._set_keepalive_timer()
    conn.read_at(1.5)
    clock.advance(10)
    assert conn.events == [("keepalive", 1.0), ("keepalive", 2.5), ("lost", 3.5)]


def test_a_shorter_interval_takes_effect_at_once():
    clock = _Clock()
    conn = _Connection(clock, interval=10.0, count_max=0)
    conn._set_keepalive_timer()
    conn.read_at(0.2)  # moves the deadline to 10.2
    clock.advance(0.5)
    conn._keepalive_interval = 1.0  # what SSHConnection.set_keepalive does before resetting
    conn._reset_keepalive_timer()
    clock.advance(20)
    assert conn.events == [("lost", 1.5)]


def test_no_keepalive_before_login_and_none_without_an_interval():
    clock = _Clock()
    conn = _Connection(clock, interval=1.0, count_max=0)
    conn._auth_complete = False
    conn.read_at(0.5)
    clock.advance(5)
    assert conn.events == [] and clock.armed == 0
    off = _Connection(clock, interval=0, count_max=0)
    off._set_keepalive_timer()
    off.read_at(6)
    clock.advance(20)
    assert off.events == [] and clock.armed == 0


def test_on_uvloop_a_deadline_within_a_millisecond_is_not_rearmed():
    # uvloop runs a delay that rounds to 0 ms at once and returns a Handle without when(); a re-arm
    # that close would leave such a Handle as the timer, and the next read would fail on it.
    loop = uvloop.new_event_loop()
    try:
        conn = _Connection(loop, interval=30.0, count_max=3)
        conn._set_keepalive_timer()
        conn._bastion_keepalive_due = loop.time() + 0.0003
        conn._keepalive_timer_callback()
        assert [kind for kind, _ in conn.events] == ["keepalive"]  # sent now, 0.3 ms early
        assert conn._keepalive_timer.when() > loop.time() + 29  # asyncssh's next check
        conn._reset_keepalive_timer()  # a read
    finally:
        conn._cancel_keepalive_timer()
        loop.close()


def test_on_uvloop_a_timer_without_when_falls_back_to_asyncssh():
    loop = uvloop.new_event_loop()
    try:
        conn = _Connection(loop, interval=0.0002, count_max=3)  # under half a millisecond: a Handle
        conn._set_keepalive_timer()
        assert not hasattr(conn._keepalive_timer, "when")
        conn._reset_keepalive_timer()  # a read: asyncssh's own cancel-and-set, no error
        conn._keepalive_interval = 30.0
        conn._reset_keepalive_timer()
        assert conn._keepalive_timer.when() > loop.time() + 29
    finally:
        conn._cancel_keepalive_timer()
        loop.close()


# --- keepalive on real connections -----------------------------------------------------------

class _NoAuth(asyncssh.SSHServer):
    def __init__(self, lost: asyncio.Event, logged_in: asyncio.Event):
        self._lost, self._logged_in = lost, logged_in

    def begin_auth(self, username: str) -> bool:
        return False

    def auth_completed(self) -> None:
        self._logged_in.set()

    def connection_lost(self, exc) -> None:
        self._lost.set()


async def _server(lost: asyncio.Event, interval: float, logged_in: asyncio.Event | None = None):
    logged_in = logged_in or asyncio.Event()
    return await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                 server_factory=lambda: _NoAuth(lost, logged_in), keepalive_interval=interval,
                                 keepalive_count_max=1)


async def test_a_peer_that_keeps_sending_is_kept_and_dropped_once_silent():
    lost = asyncio.Event()
    server = await _server(lost, interval=1.0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", agent_path=None,
                                    client_keys=None, config=None) as client:
            client._transport.pause_reading()  # it never answers a keepalive from here on
            sending_until = time.monotonic() + 4.0  # twice the silence the server allows
            while time.monotonic() < sending_until:
                client.send_debug("still here")  # each arrives as a read on the server
                await asyncio.sleep(0.2)
                assert not lost.is_set(), "a peer that was still sending was dropped"
            await asyncio.wait_for(lost.wait(), 20)  # silent now: two unanswered intervals
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (make test installs it)")
async def test_a_stopped_openssh_client_is_dropped(tmp_path):
    lost, logged_in = asyncio.Event(), asyncio.Event()
    server = await _server(lost, interval=0.5, logged_in=logged_in)
    port = server.sockets[0].getsockname()[1]
    client = subprocess.Popen(
        ["ssh", "-N", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path}/kh",
         "-o", "BatchMode=yes", "-F", "/dev/null", "u@127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(logged_in.wait(), 30)
        os.kill(client.pid, signal.SIGSTOP)
        await asyncio.wait_for(lost.wait(), 20)
    finally:
        client.kill()
        client.wait(timeout=10)
        server.close()
        await server.wait_closed()



# --- the ignore packet before every packet ----------------------------------------------------

async def _echo_ten(process) -> None:
    for _ in range(10):
        process.stdout.write(b"x")
        await asyncio.sleep(0.005)
    process.exit(0)


@pytest.mark.parametrize("cipher, ignores_expected", [
    ("aes128-gcm@openssh.com", False), ("aes256-gcm@openssh.com", False),
    ("chacha20-poly1305@openssh.com", False),
    ("aes128-ctr", True),  # not an AEAD cipher: asyncssh's own rule is kept
])
async def test_no_ignore_packet_before_each_packet_with_an_aead_cipher(cipher, ignores_expected):
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=lambda: _NoAuth(asyncio.Event(), asyncio.Event()),
                                   process_factory=_echo_ten, encoding=None)
    port = server.sockets[0].getsockname()[1]
    received: list[int] = []
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", agent_path=None,
                                    client_keys=None, config=None, encryption_algs=[cipher]) as client:
            # Packets for the connection itself (an ignore among them) are logged by the connection.
            client.log_received_packet = lambda pkttype, *_: received.append(pkttype)
            result = await asyncio.wait_for(client.run("x", encoding=None), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert result.stdout == b"x" * 10 and result.exit_status == 0
    assert (MSG_IGNORE in received) is ignores_expected, received


# --- a large read handed over a step at a time ------------------------------------------------

class _Parsed:
    """Stands in for an SSHConnection: what was parsed, and whether it is still open."""

    def __init__(self, close_after: int | None = None):
        self._transport: object | None = object()
        self.pieces: list[bytes] = []
        self._close_after = close_after

    def parse(self, connection: "_Parsed", piece) -> None:
        assert connection is self
        self.pieces.append(bytes(piece))
        if self._close_after is not None and len(self.pieces) == self._close_after:
            self._transport = None  # what asyncssh's _force_close does, e.g. on a bad MAC


@pytest.mark.parametrize("size", [0, 1, asyncssh_fastpath.RECEIVE_STEP, asyncssh_fastpath.RECEIVE_STEP + 1,
                                  256 * 1024, 256 * 1024 + 77])
def test_a_read_is_parsed_in_steps_in_order_and_whole(size):
    data = os.urandom(size)
    connection = _Parsed()
    asyncssh_fastpath.feed_in_steps(connection.parse, connection, data)
    assert b"".join(connection.pieces) == data
    assert all(len(piece) <= asyncssh_fastpath.RECEIVE_STEP for piece in connection.pieces)
    assert len(connection.pieces) == max(1, -(-size // asyncssh_fastpath.RECEIVE_STEP))


def test_nothing_more_of_a_read_is_parsed_once_the_connection_closed():
    connection = _Parsed(close_after=2)
    asyncssh_fastpath.feed_in_steps(connection.parse, connection, os.urandom(5 * asyncssh_fastpath.RECEIVE_STEP))
    assert len(connection.pieces) == 2


async def _send_four_mib(process) -> None:
    block = os.urandom(1 << 20)
    for _ in range(4):
        process.stdout.write(block)
    await process.stdout.drain()
    process.exit(0)


async def test_bulk_data_arrives_whole_and_the_receive_buffer_stays_within_a_step(monkeypatch):
    largest: list[int] = [0]
    recv_pkthdr = SSHConnection._recv_pkthdr

    def measuring(self):
        largest[0] = max(largest[0], len(self._inpbuf))
        return recv_pkthdr(self)

    monkeypatch.setattr(SSHConnection, "_recv_pkthdr", measuring)
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=lambda: _NoAuth(asyncio.Event(), asyncio.Event()),
                                   process_factory=_send_four_mib, encoding=None, window=8 << 20)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", agent_path=None,
                                    client_keys=None, config=None) as client:
            result = await asyncio.wait_for(client.run("x", encoding=None, window=8 << 20), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert len(result.stdout) == 4 << 20 and result.exit_status == 0
    # Reads of up to 256 KiB came in (asyncio's limit); the parser held at most a step and what was left
    # of a packet (under 32 KiB of data and its framing) before it.
    assert 0 < largest[0] < asyncssh_fastpath.RECEIVE_STEP + 40 * 1024, largest[0]


# --- window credit while a channel is paused --------------------------------------------------

WINDOW = 1 << 20
SENT = 24 << 20


async def _send_fast(process) -> None:
    # Text, so a channel that decodes (encoding="utf-8") gets the same bytes as characters.
    block = os.urandom(192 * 1024).hex().encode()[:256 * 1024]
    for _ in range(SENT // len(block)):
        process.stdout.write(block)
        await process.stdout.drain()
    process.exit(0)


class _Stuttering(asyncssh.SSHClientSession):
    """Pauses its channel after each piece and resumes it a moment later, as the bridge does under load;
    notes the most the channel held undelivered."""

    def __init__(self):
        self.received = 0
        self.most_held = 0
        self.chan = None

    def connection_made(self, chan) -> None:
        self.chan = chan

    def data_received(self, data, datatype) -> None:
        self.received += len(data)
        self.most_held = max(self.most_held, sum(len(piece) for piece, _ in self.chan._recv_buf))
        self.chan.pause_reading()
        asyncio.get_running_loop().call_later(0.0005, self.chan.resume_reading)


@contextlib.asynccontextmanager
async def _from_fast_sender(session_factory, encoding=None):
    """(channel, session) of a session with a WINDOW-byte window, opened to a server sending SENT bytes fast."""
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=lambda: _NoAuth(asyncio.Event(), asyncio.Event()),
                                   process_factory=_send_fast, encoding=None)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", agent_path=None,
                                    client_keys=None, config=None) as client:
            yield await client.create_session(session_factory, "x", encoding=encoding, window=WINDOW)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("encoding", [None, "utf-8"])
async def test_a_paused_channel_holds_no_more_than_its_window(encoding):
    async with _from_fast_sender(_Stuttering, encoding) as (chan, session):
        await asyncio.wait_for(chan.wait_closed(), 120)
    assert session.received == SENT
    # asyncssh credited held bytes back to the sender at each resume: the buffer grew by up to a window
    # each time (to tens of MiB here); credited only once delivered, it stays within the window.
    assert 0 < session.most_held <= WINDOW, session.most_held


class _ResumedWithin(asyncssh.SSHClientSession):
    """Starts paused; once resumed, its first piece pauses and resumes the channel from inside the
    callback (a sink that drains at once), so the rest of the kept bytes go in a flush within a flush."""

    def __init__(self):
        self.received = 0
        self.armed = False
        self.chan = None

    def connection_made(self, chan) -> None:
        self.chan = chan
        chan.pause_reading()

    def data_received(self, data, datatype) -> None:
        self.received += len(data)
        if self.armed:
            self.armed = False
            self.chan.pause_reading()
            self.chan.resume_reading()


async def test_a_channel_resumed_from_its_own_callback_is_credited_and_finishes():
    async with _from_fast_sender(_ResumedWithin) as (chan, session):
        while sum(len(piece) for piece, _ in chan._recv_buf) < WINDOW:  # the sender has filled the window
            await asyncio.sleep(0.01)
        session.armed = True
        chan.resume_reading()
        # A stand-in window during the callback once hid the bytes the inner flush delivered: no credit
        # was ever sent again and the transfer stopped after the first window.
        await asyncio.wait_for(chan.wait_closed(), 30)
    assert session.received == SENT


class _StubConnection:
    """What an SSHChannel needs of its connection here; keeps the window credits the channel sends."""

    logger = asyncssh.logging.logger

    def __init__(self):
        self.credits: list[int] = []

    def add_channel(self, chan) -> int:
        return 0

    def remove_channel(self, number: int) -> None:
        pass

    def detach_x11_listener(self, chan) -> None:
        pass

    def send_packet(self, pkttype, payload, handler=None) -> None:
        if pkttype == MSG_CHANNEL_WINDOW_ADJUST:
            self.credits.append(int.from_bytes(payload[4:8], "big"))


class _Wandering(asyncssh.SSHClientSession):
    """Pauses, or pauses and resumes from within its callback (nested up to three deep), at random."""

    def __init__(self, rng, check):
        self.rng, self.check, self.chan = rng, check, None
        self.got: list[bytes] = []
        self.depth = 0
        self.steady = False

    def data_received(self, data, datatype) -> None:
        self.got.append(data)
        self.check()
        if self.steady:
            return
        draw = self.rng.random()
        if draw < 0.25:
            self.chan.pause_reading()
        elif draw < 0.4 and self.depth < 3:
            self.depth += 1
            self.chan.pause_reading()
            self.chan.resume_reading()
            self.depth -= 1


@pytest.mark.parametrize("seed", range(40))
def test_random_pauses_never_let_the_peer_past_the_window_nor_starve_it(seed):
    import random

    from asyncssh.channel import SSHChannel
    from asyncssh.packet import SSHPacket

    rng = random.Random(seed)
    window = 64 * 1024
    loop = asyncio.new_event_loop()
    connection = _StubConnection()
    chan = SSHChannel(connection, loop, None, "strict", window, 32768)
    chan._send_chan, chan._send_state, chan._recv_state = 1, "open", "open"
    peer = {"window": window, "credited": 0, "sent": []}

    def absorb() -> None:
        while peer["credited"] < len(connection.credits):
            peer["window"] += connection.credits[peer["credited"]]
            peer["credited"] += 1

    def check() -> None:
        absorb()
        kept = sum(len(data) for data, _ in chan._recv_buf)
        assert peer["window"] + kept <= window, (peer["window"], kept)

    def send(size: int) -> None:
        absorb()
        size = min(size, peer["window"])
        if size:
            data = rng.randbytes(size)
            peer["window"] -= size
            peer["sent"].append(data)
            chan._process_data(0, 0, SSHPacket(String(data)))

    session = _Wandering(rng, check)
    session.chan, chan._session, chan._recv_paused = chan, session, False
    try:
        for _ in range(300):
            draw = rng.random()
            if draw < 0.6:
                send(rng.choice([16, 1000, 4096, 32768]))
            elif draw < 0.8:
                chan.pause_reading()
            else:
                chan.resume_reading()
            check()
        # The session stops pausing: whatever was kept is delivered and the peer can always go on.
        session.steady = True
        chan.resume_reading()
        for _ in range(50):
            absorb()
            assert peer["window"] > 0, "the peer was starved"
            send(32768)
        assert b"".join(session.got) == b"".join(peer["sent"])  # everything, in order
    finally:
        loop.close()


# --- the packets of one flush in one write --------------------------------------------------------

class _RecordingTransport:
    """Forwards to the real transport and notes each write call: ("write", 1) or ("writelines", n)."""

    def __init__(self, transport):
        self._transport = transport
        self.calls: list[tuple[str, int]] = []

    def write(self, data) -> None:
        self.calls.append(("write", 1))
        self._transport.write(data)

    def writelines(self, pieces) -> None:
        pieces = list(pieces)
        self.calls.append(("writelines", len(pieces)))
        self._transport.writelines(pieces)

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _Watched(asyncssh.SSHServer):
    """Wraps its connection's transport once the connection is up."""

    def __init__(self, seen: list):
        self._seen = seen

    def connection_made(self, conn) -> None:
        conn._transport = _RecordingTransport(conn._transport)
        self._seen.append(conn._transport)

    def begin_auth(self, username: str) -> bool:
        return False


BLOCK = os.urandom(2 << 20)


async def _send_block(process) -> None:
    process.stdout.write(BLOCK)
    await process.stdout.drain()
    process.exit(0)


async def test_the_packets_one_flush_sends_go_in_one_write_in_order():
    seen: list = []
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=lambda: _Watched(seen), process_factory=_send_block, encoding=None)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", agent_path=None,
                                    client_keys=None, config=None) as client:
            # A 256 KiB window: each credit from the client lets the server send several packets at once.
            result = await asyncio.wait_for(client.run("x", encoding=None, window=256 * 1024), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert result.stdout == BLOCK and result.exit_status == 0
    calls = seen[0].calls
    assert max(count for kind, count in calls if kind == "writelines") >= 4, calls


class _DisconnectingSession(asyncssh.SSHServerSession):
    """Sends more than the window, and disconnects from inside a flush: when its send buffer drains
    below the low mark (asyncssh calls resume_writing at the end of the flush that drained it)."""

    def __init__(self, conn):
        self.conn, self.chan = conn, None

    def connection_made(self, chan) -> None:
        self.chan = chan

    def exec_requested(self, command: str) -> bool:
        return True

    def session_started(self) -> None:
        self.chan.write(BLOCK)

    def resume_writing(self) -> None:
        self.conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, "closing from within a flush")


class _Disconnecting(asyncssh.SSHServer):
    def connection_made(self, conn) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self):
        return _DisconnectingSession(self.conn)


class _Lost(asyncssh.SSHClient):
    def __init__(self):
        self.reason: Exception | None = None

    def connection_lost(self, exc) -> None:
        self.reason = exc


async def test_a_disconnect_sent_within_a_flush_still_reaches_the_peer():
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=_Disconnecting, encoding=None)
    port = server.sockets[0].getsockname()[1]
    try:
        conn, client = await asyncssh.create_connection(_Lost, "127.0.0.1", port, known_hosts=None, username="u",
                                                        agent_path=None, client_keys=None, config=None)
        result = await asyncio.wait_for(conn.run("x", encoding=None, window=256 * 1024, check=False), 60)
        await asyncio.wait_for(conn.wait_closed(), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert result.stdout == BLOCK
    # The disconnect and its reason arrived: the packets held in the flush were written before asyncssh
    # aborted the connection, as they would have been written one by one without the batching.
    assert isinstance(client.reason, asyncssh.DisconnectError), client.reason
    assert "closing from within a flush" in str(client.reason)


# --- AES-GCM: one key schedule per direction, fewer copies, the same bytes on the wire ----------------

def _rfc5647_wire(key: bytes, fixed: bytes, invocation: int, header: bytes, packet: bytes) -> bytes:
    """What RFC 5647 puts on the wire for one packet: length header, then ciphertext and tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return header + AESGCM(key).encrypt(fixed + invocation.to_bytes(8, "big"), packet, header)


@pytest.mark.parametrize("cipher_name, key_size", [("aes128-gcm", 16), ("aes256-gcm", 32)])
def test_gcm_packets_are_the_bytes_rfc_5647_puts_on_the_wire_and_read_back(cipher_name, key_size):
    from asyncssh.encryption import GCMEncryption

    key, fixed = os.urandom(key_size), os.urandom(4)
    start = (1 << 64) - 2  # the invocation counter wraps within these packets, as asyncssh's does
    sender = GCMEncryption.new(cipher_name, key, fixed + start.to_bytes(8, "big"))
    receiver = GCMEncryption.new(cipher_name, key, fixed + start.to_bytes(8, "big"))
    for number, size in enumerate([12, 32 * 1024 + 12, 60, 1020]):
        packet = os.urandom(size)
        header = len(packet).to_bytes(4, "big")
        encrypted, mac = sender.encrypt_packet(number, header, packet)
        wire = encrypted + mac
        assert wire == _rfc5647_wire(key, fixed, (start + number) % (1 << 64), header, packet)
        assert receiver.decrypt_packet(number, wire[:16], wire[16:-16], 4, wire[-16:]) == packet


def test_a_gcm_packet_altered_on_the_wire_is_refused():
    from asyncssh.encryption import GCMEncryption

    key, iv = os.urandom(16), os.urandom(12)
    sender, receiver = GCMEncryption.new("aes128-gcm", key, iv), GCMEncryption.new("aes128-gcm", key, iv)
    packet = os.urandom(100)
    encrypted, mac = sender.encrypt_packet(0, (100).to_bytes(4, "big"), packet)
    wire = bytearray(encrypted + mac)
    wire[40] ^= 1
    assert receiver.decrypt_packet(0, bytes(wire[:16]), bytes(wire[16:-16]), 4, bytes(wire[-16:])) is None


def test_gcm_keys_are_scheduled_once_per_direction_not_per_packet(monkeypatch):
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption

    built = []
    real = asyncssh_fastpath.AESGCM
    monkeypatch.setattr(asyncssh_fastpath, "AESGCM", lambda key: built.append(key) or real(key))
    key, iv = os.urandom(16), os.urandom(12)
    sender = GCMEncryption.new("aes128-gcm", key, iv)
    # asyncssh's own cipher calls use the same key schedule and counter
    cipher_out, cipher_in = GCMCipher("aes128-gcm", key, iv), GCMCipher("aes128-gcm", key, iv)
    header = (64).to_bytes(4, "big")
    for number in range(20):
        sender.encrypt_packet(number, header, os.urandom(64))
        body, tag = cipher_out.encrypt_and_sign(header, b"x" * 64)
        assert body + tag == _rfc5647_wire(key, iv[:4], (int.from_bytes(iv[4:], "big") + number) % (1 << 64), header, b"x" * 64)
        assert cipher_in.verify_and_decrypt(header, body[4:], tag) == b"x" * 64
    assert built == [key, key, key]


@pytest.mark.parametrize("cipher_name", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_a_private_key_asyncssh_encrypts_with_gcm_still_opens_in_openssh(tmp_path, cipher_name):
    """asyncssh's key export uses the same GCM encryption as the connection, with the tag after the data."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "key"
    path.write_bytes(key.export_private_key(passphrase="pass phrase", cipher_name=cipher_name))
    path.chmod(0o600)
    opened = subprocess.run(["ssh-keygen", "-y", "-P", "pass phrase", "-f", str(path)],
                            capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert opened.returncode == 0, opened.stderr.decode(errors="replace")
    assert opened.stdout.split()[:2] == key.export_public_key().split()[:2]
    assert asyncssh.import_private_key(path.read_bytes(), "pass phrase").export_public_key() == key.export_public_key()


# --- chacha20-poly1305: one ChaCha20 stream for the Poly1305 key and the payload ---------------------

def _openssh_chacha_reference(key: bytes, header: bytes, packet: bytes, seq: int) -> tuple[bytes, bytes]:
    """The packet as asyncssh's own ChaCha20 and Poly1305 functions build it (PROTOCOL.chacha20poly1305)."""
    from asyncssh.crypto.chacha import chacha20, poly1305

    nonce = seq.to_bytes(8, "big")
    sealed = chacha20(key[32:], header, nonce, 0) + chacha20(key[:32], packet, nonce, 1)
    return sealed, poly1305(key[:32], sealed, nonce)


@pytest.mark.parametrize("size", [8, 60, 64, 65, 1020, 32 * 1024 + 12])
def test_chacha_packets_are_the_bytes_openssh_expects_and_read_back(size):
    from asyncssh.encryption import ChachaEncryption

    key = os.urandom(64)
    sender, receiver = (ChachaEncryption.new("chacha20-poly1305", key, b"") for _ in range(2))
    for seq in (0, 7, 0xFFFFFFFF):
        packet = os.urandom(size)
        header = len(packet).to_bytes(4, "big")
        encrypted, mac = sender.encrypt_packet(seq, header, packet)
        assert (encrypted, mac) == _openssh_chacha_reference(key, header, packet, seq)
        first, length = receiver.decrypt_header(seq, encrypted[:8], 4)
        assert length == header
        assert receiver.decrypt_packet(seq, first, encrypted[8:], 4, mac) == packet
        altered = bytearray(encrypted)
        altered[-1] ^= 1
        assert receiver.decrypt_packet(seq, first, bytes(altered[8:]), 4, mac) is None
        assert receiver.decrypt_packet(seq, first, encrypted[8:], 4, bytes(16)) is None


def test_a_chacha_packet_keys_two_streams_not_three(monkeypatch):
    import asyncssh.crypto.chacha as asyncssh_chacha
    from asyncssh.encryption import ChachaEncryption

    keyed = []

    def counting(real):
        return lambda *args, **kwargs: keyed.append(1) or real(*args, **kwargs)

    monkeypatch.setattr(asyncssh_chacha, "Cipher", counting(asyncssh_chacha.Cipher))
    monkeypatch.setattr(asyncssh_fastpath, "Cipher", counting(asyncssh_fastpath.Cipher))
    sender = ChachaEncryption.new("chacha20-poly1305", os.urandom(64), b"")
    for seq in range(5):
        sender.encrypt_packet(seq, (60).to_bytes(4, "big"), os.urandom(60))
    assert len(keyed) == 10  # the length's stream and the packet's; asyncssh keys a third for Poly1305


async def _echo_stdin(process) -> None:
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (make test installs it)")
@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com",
                                    "aes256-gcm@openssh.com"])
async def test_openssh_talks_to_the_fast_path_both_ways(tmp_path, cipher):
    """A real OpenSSH client and an asyncssh server with every patch: 2 MiB each way, with a rekey."""
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   server_factory=lambda: _NoAuth(asyncio.Event(), asyncio.Event()),
                                   process_factory=_echo_stdin, encoding=None, rekey_bytes=512 * 1024)
    port = server.sockets[0].getsockname()[1]
    sent = os.urandom(2 << 20)
    try:
        client = await asyncio.create_subprocess_exec(
            "ssh", "-p", str(port), "-c", cipher, "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path}/kh", "-o", "BatchMode=yes", "-F", "/dev/null", "u@127.0.0.1", "x",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        echoed, errors = await asyncio.wait_for(client.communicate(sent), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert client.returncode == 0, errors.decode(errors="replace")
    assert echoed == sent
