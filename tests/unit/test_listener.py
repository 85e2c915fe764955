"""Listener on real loopback sockets: routing, the unauthenticated cap, PROXY v2, slow clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass

import aiohttp
import pytest

from bastion.config import load_config
from bastion.console.app import ConsoleServer
from bastion.errors import ConfigError
from bastion.keys import create_tls_material
from bastion.listener import Listener, Peer, Route, classify_first_bytes, route_at_deadline
from bastion.proxyproto import build_header

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
WAIT = 5.0  # generous ceiling on waits that should finish almost at once


@dataclass
class Handed:
    route: str
    sock: socket.socket
    peer: Peer


class Front:
    """Stands in for the SSH/TLS front-ends: records each hand-over and holds the connection."""

    def __init__(self):
        self.handed: asyncio.Queue[Handed] = asyncio.Queue()
        self.finish = asyncio.Event()

    async def on_ssh(self, sock: socket.socket, peer: Peer) -> None:
        await self._hold("ssh", sock, peer)

    async def on_tls(self, sock: socket.socket, peer: Peer) -> None:
        await self._hold("tls", sock, peer)

    async def _hold(self, route: str, sock: socket.socket, peer: Peer) -> None:
        assert not sock.getblocking()
        self.handed.put_nowait(Handed(route, sock, peer))
        try:
            async with asyncio.timeout(30):
                await self.finish.wait()
        finally:
            sock.close()

    async def next(self) -> Handed:
        async with asyncio.timeout(WAIT):
            return await self.handed.get()


def make_config(tmp_path, **settings):
    environ = {"BASTION_LISTEN": "127.0.0.1:0", "BASTION_LISTENER_SNIFF_TIMEOUT": "3"}
    environ.update({"BASTION_" + key.upper(): str(value) for key, value in settings.items()})
    return load_config(tmp_path, environ=environ)


class Harness:
    """A listener plus its clients, torn down together."""

    def __init__(self):
        self.listeners: list[Listener] = []
        self.fronts: list[Front] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.consoles: list[ConsoleServer] = []

    async def listener(self, config, on_tls=None) -> tuple[Listener, Front]:
        front = Front()
        listener = Listener(config, front.on_ssh, on_tls or front.on_tls)
        await listener.start()
        self.listeners.append(listener)
        self.fronts.append(front)
        return listener, front

    async def connect(self, listener: Listener, first: bytes = b""):
        host, port = listener.address
        reader, writer = await asyncio.open_connection(host, port)
        self.writers.append(writer)
        if first:
            writer.write(first)
            await writer.drain()
        return reader, writer

    async def close(self):
        for front in self.fronts:
            front.finish.set()
        for writer in self.writers:
            writer.close()
        for listener in self.listeners:
            await listener.close(cancel_handlers=True)
        for console in self.consoles:
            await console.close()


@pytest.fixture
async def harness():
    harness = Harness()
    yield harness
    await harness.close()


async def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(WAIT):
        while marker not in data:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                break
            data += chunk
    return data


async def assert_closed_by_server(reader: asyncio.StreamReader, timeout: float = WAIT) -> None:
    try:
        async with asyncio.timeout(timeout):
            data = await reader.read(4096)
    except ConnectionResetError:
        return
    assert data == b""


def local_port(writer: asyncio.StreamWriter) -> int:
    return writer.get_extra_info("sockname")[1]


# --- routing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, route", [
    (b"SSH-2.0-x", Route.SSH), (b"SSH-", Route.SSH),
    (b"\x16\x03\x01\x02\x00", Route.TLS), (b"\x16\x03\x04", Route.TLS), (b"\x16\x03\x00", Route.TLS),
    (b"S", None), (b"SSH", None), (b"\x16", None), (b"\x16\x03", None),
    (b"\x16\x03\x05", Route.GARBAGE), (b"\x16\x02\x01", Route.GARBAGE), (b"GET / HTTP/1.1", Route.GARBAGE),
    (b"ssh-2.0", Route.GARBAGE), (b"SSX", Route.GARBAGE), (b"\r\n\r\n\x00\r\nQUIT\n", Route.GARBAGE),
    (b"PROXY TCP4 ", Route.GARBAGE), (b"\x00", Route.GARBAGE),
])
def test_classify_first_bytes(data, route):
    assert classify_first_bytes(data) is route


@pytest.mark.parametrize("data, route", [
    (b"", Route.SSH), (b"S", Route.SSH), (b"SSH", Route.SSH), (b"\x16", Route.GARBAGE), (b"\x16\x03", Route.GARBAGE),
])
def test_route_at_deadline(data, route):
    assert route_at_deadline(data) is route


async def test_ssh_bytes_reach_on_ssh_unconsumed(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path))
    _, writer = await harness.connect(listener, SSH_BANNER)
    handed = await front.next()
    assert handed.route == "ssh"
    assert await recv_until(handed.sock, b"\r\n") == SSH_BANNER
    assert handed.peer.addr == "127.0.0.1" and handed.peer.port == local_port(writer)
    assert not handed.peer.via_proxy
    assert listener.stats.ssh == 1 and listener.stats.accepted == 1


async def test_ipv6_literal_listen(tmp_path, harness):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    listener, front = await harness.listener(make_config(tmp_path, listen="[::1]:0"))
    assert listener.address[0] == "::1" and listener.address[1] > 0
    await harness.connect(listener, SSH_BANNER)
    handed = await front.next()
    assert handed.peer.addr == "::1"
    assert await recv_until(handed.sock, b"\r\n") == SSH_BANNER


async def test_unbindable_address_is_a_config_error(tmp_path):
    listener = Listener(make_config(tmp_path, listen="192.0.2.1:0"), Front().on_ssh, Front().on_tls)
    with pytest.raises(ConfigError, match="listen"):
        await listener.start()


async def test_garbage_is_closed_and_next_client_served(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path))
    reader, _ = await harness.connect(listener, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await assert_closed_by_server(reader)
    assert front.handed.empty()
    assert listener.stats.closed_garbage == 1 and listener.stats.ssh == 0 and listener.stats.tls == 0
    await harness.connect(listener, SSH_BANNER)
    assert (await front.next()).route == "ssh"
    assert listener.unauthenticated == 1


async def test_eof_before_any_byte_is_closed_quietly(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path))
    _, writer = await harness.connect(listener)
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(WAIT):
        while listener.stats.closed_early == 0:
            await asyncio.sleep(0.01)
    assert front.handed.empty() and listener.unauthenticated == 0


async def test_silent_client_goes_to_ssh_after_deadline_without_delaying_others(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_sniff_timeout=0.5))
    _, silent = await harness.connect(listener)
    _, talker = await harness.connect(listener, SSH_BANNER)
    first, second = await front.next(), await front.next()
    assert first.peer.port == local_port(talker)
    assert second.peer.port == local_port(silent) and second.route == "ssh"
    # The silent client's socket is handed over untouched: still nothing to read, still open.
    with pytest.raises(BlockingIOError):
        second.sock.recv(1, socket.MSG_PEEK)


async def test_partial_ssh_prefix_then_stall_goes_to_ssh_with_bytes_intact(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_sniff_timeout=0.3))
    _, writer = await harness.connect(listener, b"SS")
    handed = await front.next()
    assert handed.route == "ssh"
    writer.write(b"H-2.0-late\r\n")
    assert await recv_until(handed.sock, b"\r\n") == b"SSH-2.0-late\r\n"


async def test_partial_tls_prefix_then_stall_is_closed(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_sniff_timeout=0.3))
    reader, _ = await harness.connect(listener, b"\x16")
    await assert_closed_by_server(reader)
    assert front.handed.empty() and listener.stats.closed_garbage == 1


async def test_slowly_completed_prefix_is_routed_before_deadline(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_sniff_timeout=30))
    _, writer = await harness.connect(listener, b"S")
    await asyncio.sleep(0.05)
    writer.write(b"SH-2.0-x\r\n")
    handed = await front.next()  # well before the 30 s deadline
    assert await recv_until(handed.sock, b"\r\n") == b"SSH-2.0-x\r\n"


# --- handler ownership and failures -----------------------------------------------------------------

async def test_handler_error_is_logged_without_its_message_and_socket_closed(tmp_path, harness, caplog):
    async def failing(sock, peer):
        raise ValueError("password=hunter2")

    config = make_config(tmp_path)
    listener = Listener(config, failing, failing)
    await listener.start()
    harness.listeners.append(listener)
    with caplog.at_level(logging.ERROR, logger="bastion.listener"):
        reader, _ = await harness.connect(listener, SSH_BANNER)
        await assert_closed_by_server(reader)
        async with asyncio.timeout(WAIT):
            while listener.stats.handler_errors == 0:
                await asyncio.sleep(0.01)
    assert "ValueError" in caplog.text and "hunter2" not in caplog.text
    assert listener.unauthenticated == 0


async def test_close_drops_sniffing_connections_but_keeps_handlers(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_sniff_timeout=30))
    silent_reader, _ = await harness.connect(listener)
    _, writer = await harness.connect(listener, SSH_BANNER)
    handed = await front.next()
    async with asyncio.timeout(WAIT):
        while listener.stats.accepted < 2:
            await asyncio.sleep(0.01)
    await listener.close()
    await assert_closed_by_server(silent_reader)
    writer.write(b"still here\n")
    assert b"still here\n" in await recv_until(handed.sock, b"here\n")
    with pytest.raises(OSError):
        await asyncio.open_connection(*listener.address)


async def test_close_with_cancel_handlers_ends_them(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path))
    reader, _ = await harness.connect(listener, SSH_BANNER)
    await front.next()
    await listener.close(cancel_handlers=True)
    await assert_closed_by_server(reader)
    assert listener.unauthenticated == 0


# --- unauthenticated cap ----------------------------------------------------------------------------

async def test_unauthenticated_cap(tmp_path, harness, caplog):
    listener, front = await harness.listener(make_config(tmp_path, listener_max_unauthenticated=2))
    await harness.connect(listener, SSH_BANNER)
    await harness.connect(listener, SSH_BANNER)
    first, second = await front.next(), await front.next()
    assert listener.unauthenticated == 2

    with caplog.at_level(logging.WARNING, logger="bastion.listener"):
        reader, _ = await harness.connect(listener, SSH_BANNER)
        await assert_closed_by_server(reader)
    assert listener.stats.refused_over_cap == 1 and front.handed.empty()
    assert "refused connection from 127.0.0.1" in caplog.text

    first.peer.authenticated()
    first.peer.authenticated()  # idempotent: frees one slot, not two
    assert listener.unauthenticated == 1
    await harness.connect(listener, SSH_BANNER)
    fourth = await front.next()
    assert fourth.route == "ssh" and listener.unauthenticated == 2
    first.peer.closed()  # already released: still idempotent
    assert listener.unauthenticated == 2

    second.peer.closed()
    assert listener.unauthenticated == 1


async def test_silent_clients_count_against_the_cap(tmp_path, harness):
    listener, front = await harness.listener(
        make_config(tmp_path, listener_max_unauthenticated=1, listener_sniff_timeout=30))
    await harness.connect(listener)
    async with asyncio.timeout(WAIT):
        while listener.unauthenticated < 1:
            await asyncio.sleep(0.01)
    reader, _ = await harness.connect(listener, SSH_BANNER)
    await assert_closed_by_server(reader)
    assert listener.stats.refused_over_cap == 1


async def test_handler_return_releases_the_slot(tmp_path, harness):
    listener, front = await harness.listener(make_config(tmp_path, listener_max_unauthenticated=1))
    await harness.connect(listener, SSH_BANNER)
    await front.next()
    front.finish.set()
    async with asyncio.timeout(WAIT):
        while listener.unauthenticated:
            await asyncio.sleep(0.01)


# --- PROXY protocol v2 ------------------------------------------------------------------------------

def proxy_config(tmp_path, trusted="127.0.0.0/8", **settings):
    return make_config(tmp_path, listener_proxy_protocol_from=trusted, **settings)


async def test_proxy_v2_from_trusted_balancer(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path))
    header = build_header(("203.0.113.7", 4242), ("192.0.2.1", 8022))
    await harness.connect(listener, header + SSH_BANNER)
    handed = await front.next()
    assert (handed.peer.addr, handed.peer.port, handed.peer.via_proxy) == ("203.0.113.7", 4242, True)
    assert await recv_until(handed.sock, b"\r\n") == SSH_BANNER  # header consumed, nothing more


async def test_proxy_v2_ipv6_header(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path))
    header = build_header(("2001:db8::1", 60000), ("2001:db8::2", 8022))
    await harness.connect(listener, header + SSH_BANNER)
    handed = await front.next()
    assert (handed.peer.addr, handed.peer.port, handed.peer.via_proxy) == ("2001:db8::1", 60000, True)


async def test_proxy_v2_ipv4_mapped_source_is_normalised(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path))
    await harness.connect(listener, build_header(("::ffff:198.51.100.4", 1), ("::1", 2)) + SSH_BANNER)
    assert (await front.next()).peer.addr == "198.51.100.4"


async def test_proxy_v2_local_uses_socket_peer(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path))
    _, writer = await harness.connect(listener, build_header(None, None) + SSH_BANNER)
    handed = await front.next()
    assert (handed.peer.addr, handed.peer.port, handed.peer.via_proxy) == ("127.0.0.1", local_port(writer), False)
    assert await recv_until(handed.sock, b"\r\n") == SSH_BANNER


async def test_proxy_v2_header_split_across_packets(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path))
    header = build_header(("203.0.113.9", 7), ("192.0.2.1", 8022))
    _, writer = await harness.connect(listener, header[:5])
    await asyncio.sleep(0.05)
    writer.write(header[5:20])
    await asyncio.sleep(0.05)
    writer.write(header[20:] + SSH_BANNER)
    handed = await front.next()
    assert handed.peer.addr == "203.0.113.9"
    assert await recv_until(handed.sock, b"\r\n") == SSH_BANNER


_GOOD_HEADER = build_header(("203.0.113.7", 1), ("192.0.2.1", 2))


@pytest.mark.parametrize("first", [
    _GOOD_HEADER[:12] + b"\x11" + _GOOD_HEADER[13:],
    _GOOD_HEADER[:14] + b"\xff\xff" + b"x" * 64,
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 8022\r\n" + SSH_BANNER,
    SSH_BANNER + b"x" * 16,  # a trusted balancer must send the header
], ids=["wrong-version", "huge-length", "proxy-v1-text", "no-header"])
async def test_malformed_proxy_header_from_trusted_balancer_is_closed(tmp_path, harness, first):
    listener, front = await harness.listener(proxy_config(tmp_path))
    reader, _ = await harness.connect(listener, first)
    await assert_closed_by_server(reader)
    assert front.handed.empty() and listener.stats.proxy_rejected == 1


async def test_truncated_proxy_header_times_out(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path, listener_sniff_timeout=0.3))
    reader, _ = await harness.connect(listener, build_header(("203.0.113.7", 1), ("192.0.2.1", 2))[:20])
    await assert_closed_by_server(reader)
    assert front.handed.empty() and listener.stats.closed_early == 1


async def test_proxy_header_from_untrusted_source_is_not_honoured(tmp_path, harness):
    listener, front = await harness.listener(proxy_config(tmp_path, trusted="10.0.0.0/8"))
    header = build_header(("203.0.113.7", 4242), ("192.0.2.1", 8022))
    reader, _ = await harness.connect(listener, header + SSH_BANNER)
    await assert_closed_by_server(reader)
    assert front.handed.empty() and listener.stats.closed_garbage == 1
    # and an ordinary client from the same untrusted address is served as itself
    await harness.connect(listener, SSH_BANNER)
    assert (await front.next()).peer.addr == "127.0.0.1"


# --- TLS through the listener into the console ------------------------------------------------------

async def console_listener(tmp_path, harness, **settings):
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    cert, _ = create_tls_material(keys)
    config = make_config(tmp_path, **settings)
    console = ConsoleServer(config)
    await console.start()
    harness.consoles.append(console)
    listener, front = await harness.listener(config, on_tls=console.handle)
    client = ssl.create_default_context(cafile=str(cert))
    return listener, front, client


async def test_tls_client_reaches_console(tmp_path, harness):
    listener, front, client = await console_listener(tmp_path, harness)
    host, port = listener.address
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://{host}:{port}/healthz", ssl=client) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert response.headers["Cache-Control"] == "no-store"
        async with session.get(f"https://{host}:{port}/anything", ssl=client) as response:
            assert response.status == 404
            assert await response.json() == {"error": "not found"}
    assert listener.stats.tls >= 1 and front.handed.empty()


async def test_half_open_tls_hello_is_dropped_after_handshake_timeout(tmp_path, harness):
    listener, front, client = await console_listener(tmp_path, harness, listener_tls_handshake_timeout=1.0)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:3] == b"\x16\x03\x01"

    reader, _ = await harness.connect(listener, hello[:20])
    dropped = asyncio.create_task(assert_closed_by_server(reader, timeout=WAIT + 1.0))
    host, port = listener.address
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://{host}:{port}/healthz", ssl=client) as response:
            assert response.status == 200
    assert not dropped.done()  # the stalled hello did not hold anyone up, and is still waiting
    await dropped
    assert listener.stats.tls == 2


# --- real libraries on the handed-over socket -------------------------------------------------------

@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "proxy-v2"])
async def test_asyncssh_runs_on_the_handed_over_socket(tmp_path, harness, proxied):
    import asyncssh

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ended = asyncio.Event()
    seen: list[Peer] = []

    class NoAuth(asyncssh.SSHServer):
        def begin_auth(self, username):
            return False  # this test is about the socket, not authentication

        def connection_lost(self, exc):
            ended.set()

    async def on_ssh(sock, peer):
        seen.append(peer)
        await asyncssh.run_server(sock, server_host_keys=[host_key], server_factory=NoAuth)
        peer.authenticated()
        async with asyncio.timeout(WAIT):
            await ended.wait()

    config = proxy_config(tmp_path) if proxied else make_config(tmp_path)
    listener = Listener(config, on_ssh, Front().on_tls)
    await listener.start()
    harness.listeners.append(listener)
    host, port = listener.address
    sock = socket.create_connection((host, port))
    if proxied:
        sock.sendall(build_header(("203.0.113.7", 4242), ("192.0.2.1", 8022)))
    sock.setblocking(False)
    async with asyncio.timeout(WAIT):
        async with await asyncssh.run_client(sock, known_hosts=None, username="alice") as conn:
            assert conn.get_extra_info("server_version").startswith("SSH-2.0-AsyncSSH")
    await asyncio.wait_for(ended.wait(), WAIT)
    assert seen[0].addr == ("203.0.113.7" if proxied else "127.0.0.1")
    assert listener.unauthenticated == 0
