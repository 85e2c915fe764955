"""The single gateway port: accept, cap unauthenticated clients, PROXY v2, sniff SSH vs TLS, hand over."""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import socket
import traceback
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from bastion.config import Config
from bastion.errors import BastionError, ConfigError
from bastion.proxyproto import PREFIX_LEN, ProxyHeader, ProxyProtocolError, header_length, parse_header

log = logging.getLogger(__name__)

SSH_PREFIX = b"SSH-"
_TLS_HANDSHAKE = 0x16
_TLS_MAJOR = 0x03
_TLS_MAX_MINOR = 0x04
_SNIFF_BYTES = 8
# A client that sent part of its first bytes and stalled leaves the socket readable (peeked data
# is still queued), so readiness cannot tell us when more arrives: poll, backing off.
_POLL_FIRST = 0.005
_POLL_MAX = 0.1
# Accept failures such as EMFILE repeat at once; pause so the loop does not spin.
_ACCEPT_ERROR_PAUSE = 0.1
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Over-cap refusals can come in floods; log one line per interval with a count.
_REFUSAL_LOG_INTERVAL = 1.0
_CLOSE_TIMEOUT = 5.0


class Route(enum.Enum):
    """Where the first bytes of a connection send it."""

    SSH = "ssh"
    TLS = "tls"
    GARBAGE = "garbage"


def classify_first_bytes(data: bytes) -> Route | None:
    """Route for a connection's first bytes, or None while they are a prefix of something valid."""
    if data.startswith(SSH_PREFIX):
        return Route.SSH
    if len(data) >= 3 and data[0] == _TLS_HANDSHAKE and data[1] == _TLS_MAJOR and data[2] <= _TLS_MAX_MINOR:
        return Route.TLS
    if SSH_PREFIX.startswith(data) or data in (bytes([_TLS_HANDSHAKE]), bytes([_TLS_HANDSHAKE, _TLS_MAJOR])):
        return None
    return Route.GARBAGE


def route_at_deadline(data: bytes) -> Route:
    """Route when the sniff deadline passes: silence or a partial `SSH-` is SSH (clients that wait for
    the server's banner exist); anything else is not a protocol we speak."""
    return Route.SSH if SSH_PREFIX.startswith(data) else Route.GARBAGE


@dataclass(eq=False)
class Peer:
    """The client at the far end of one connection, and its slot in the unauthenticated cap."""

    addr: str  # real client address (from PROXY v2 when trusted, else the socket peer)
    port: int
    via_proxy: bool = False
    _on_release: Callable[[], None] | None = field(default=None, repr=False)

    def authenticated(self) -> None:
        """The client has authenticated: it no longer counts against the unauthenticated cap."""
        self._release()

    def closed(self) -> None:
        """The connection is over: release its slot if it still holds one."""
        self._release()

    def _release(self) -> None:
        release, self._on_release = self._on_release, None
        if release is not None:
            release()


@dataclass
class ListenerStats:
    """Counters since start; read by tests and, later, metrics."""

    accepted: int = 0
    refused_over_cap: int = 0
    closed_garbage: int = 0
    closed_early: int = 0  # EOF, reset or a trusted proxy that never finished its header
    proxy_rejected: int = 0  # malformed PROXY header from a trusted load balancer
    ssh: int = 0
    tls: int = 0
    handler_errors: int = 0


ConnectionHandler = Callable[[socket.socket, Peer], Awaitable[None]]


class _ClosedEarly(Exception):
    """The client went away (or stalled) before we could route it."""


class Listener:
    """Accepts on one port and hands each connection, already routed, to the SSH or TLS front-end."""

    def __init__(self, config: Config, on_ssh: ConnectionHandler, on_tls: ConnectionHandler):
        self._config = config
        self._on_ssh = on_ssh
        self._on_tls = on_tls
        self._sniff_timeout: float = config["listener.sniff_timeout"]
        self._max_unauthenticated: int = config["listener.max_unauthenticated"]
        self._trusted_proxies = tuple(ipaddress.ip_network(cidr, strict=False)
                                      for cidr in config["listener.proxy_protocol_from"])
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._sniffing: set[asyncio.Task[None]] = set()
        self._handling: set[asyncio.Task[None]] = set()
        self._unauthenticated = 0
        self._closing = False
        self._refusals_unlogged = 0
        self._last_refusal_log = float("-inf")
        self.stats = ListenerStats()

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("listener not started")
        return self._address

    @property
    def unauthenticated(self) -> int:
        """Connections currently holding a slot in the unauthenticated cap."""
        return self._unauthenticated

    async def start(self) -> tuple[str, int]:
        """Bind `listen` (port 0 picks a free port) and start accepting; returns the bound address."""
        if self._sock is not None or self._closing:
            raise RuntimeError("listener already started (a closed listener cannot restart)")
        host, port = self._config.listen
        self._sock = await _bind(host, port)
        self._address = self._sock.getsockname()[:2]
        self._accept_task = asyncio.create_task(self._accept_loop(), name="bastion-listener-accept")
        log.info("listening on %s port %d", self._address[0], self._address[1])
        return self._address

    async def close(self, cancel_handlers: bool = False, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop accepting and drop connections still being sniffed.

        Handlers already running keep their connections unless `cancel_handlers` is set; then they
        are cancelled too. Waits at most `timeout` seconds for each group of tasks to end.
        """
        self._closing = True
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.wait([self._accept_task], timeout=timeout)
            self._accept_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        groups = [self._sniffing] + ([self._handling] if cancel_handlers else [])
        for tasks in groups:
            pending = set(tasks)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        listening = self._sock
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue  # the client gave up between SYN and accept
            except OSError as exc:
                if self._closing:
                    return
                # EMFILE and friends clear when connections end; anything else is unexpected, but
                # a gateway that silently stops accepting is worse than one that keeps trying.
                level = logging.WARNING if exc.errno in _ACCEPT_RESOURCE_ERRORS else logging.ERROR
                log.log(level, "accept failed: %s", errno.errorcode.get(exc.errno or 0, type(exc).__name__))
                await asyncio.sleep(_ACCEPT_ERROR_PAUSE)
                continue
            self.stats.accepted += 1
            sock_addr, sock_port = _normalise_address(address[0]), address[1]
            if self._unauthenticated >= self._max_unauthenticated:
                self.stats.refused_over_cap += 1
                self._log_refusal(sock_addr)
                conn.close()
                continue
            self._unauthenticated += 1
            slot = _Slot(self)
            task = asyncio.create_task(self._serve(conn, sock_addr, sock_port, slot),
                                       name=f"bastion-conn-{sock_addr}:{sock_port}")
            self._sniffing.add(task)

    def _log_refusal(self, sock_addr: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log < _REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            return
        since = f"; {self._refusals_unlogged} more refused since the last report" if self._refusals_unlogged else ""
        log.warning("refused connection from %s: %d clients are already unauthenticated (the limit)%s",
                    sock_addr, self._unauthenticated, since)
        self._last_refusal_log = now
        self._refusals_unlogged = 0

    def _release_slot(self) -> None:
        self._unauthenticated -= 1

    async def _serve(self, sock: socket.socket, sock_addr: str, sock_port: int, slot: _Slot) -> None:
        task = asyncio.current_task()
        assert task is not None
        handed_over = False
        try:
            peer = await self._identify(sock, sock_addr, sock_port, slot)
            if peer is None:
                return
            route = await self._sniff(sock)
            if route is Route.GARBAGE:
                self.stats.closed_garbage += 1
                log.info("closed connection from %s: neither SSH nor TLS", peer.addr)
                return
            if route is None:
                self.stats.closed_early += 1
                log.debug("connection from %s closed before sending anything", peer.addr)
                return
            # From here the handler owns the socket; close() no longer drops it unless asked to.
            self._sniffing.discard(task)
            self._handling.add(task)
            handed_over = True
            await self._dispatch(route, sock, peer)
        except Exception as exc:  # a bug here must cost one connection, never the listener
            log.error("connection from %s failed in the listener: %s", sock_addr, _describe(exc))
        finally:
            slot.release()
            self._sniffing.discard(task)
            self._handling.discard(task)
            if not handed_over:
                sock.close()

    async def _identify(self, sock: socket.socket, sock_addr: str, sock_port: int,
                        slot: _Slot) -> Peer | None:
        if not self._is_trusted_proxy(sock_addr):
            return Peer(sock_addr, sock_port, False, _on_release=slot.release)
        try:
            header = await self._read_proxy_header(sock)
        except ProxyProtocolError as exc:
            self.stats.proxy_rejected += 1
            log.warning("closed connection from load balancer %s: bad PROXY v2 header (%s)", sock_addr, exc)
            return None
        except _ClosedEarly as exc:
            self.stats.closed_early += 1
            log.info("closed connection from load balancer %s: %s", sock_addr, exc)
            return None
        if header.source is None:
            return Peer(sock_addr, sock_port, False, _on_release=slot.release)
        return Peer(_normalise_address(header.source[0]), header.source[1], True, _on_release=slot.release)

    def _is_trusted_proxy(self, addr: str) -> bool:
        if not self._trusted_proxies:
            return False
        ip = ipaddress.ip_address(addr)
        return any(ip in network for network in self._trusted_proxies if network.version == ip.version)

    async def _read_proxy_header(self, sock: socket.socket) -> ProxyHeader:
        # Read (not peek) exactly the header, never a byte more: what follows belongs to SSH or TLS.
        deadline = asyncio.get_running_loop().time() + self._sniff_timeout
        prefix = await _recv_exactly(sock, PREFIX_LEN, deadline)
        rest = await _recv_exactly(sock, header_length(prefix) - PREFIX_LEN, deadline)
        return parse_header(prefix + rest)

    async def _sniff(self, sock: socket.socket) -> Route | None:
        """Peek at the first bytes until they decide the route or the deadline passes.

        Returns None when the client closed or reset before sending anything.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._sniff_timeout
        pause = _POLL_FIRST
        while True:
            try:
                data = sock.recv(_SNIFF_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                return None  # reset before the first byte
            if data == b"":
                return None
            if data:
                route = classify_first_bytes(data)
                if route is not None:
                    return route
            remaining = deadline - loop.time()
            if remaining <= 0:
                return route_at_deadline(data or b"")
            if data:
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, _POLL_MAX)
            else:
                await _wait_readable(sock, remaining)

    async def _dispatch(self, route: Route, sock: socket.socket, peer: Peer) -> None:
        if route is Route.SSH:
            self.stats.ssh += 1
            handler = self._on_ssh
        else:
            self.stats.tls += 1
            handler = self._on_tls
        try:
            await handler(sock, peer)
        except asyncio.CancelledError:
            # Shut the connection down but leave the descriptor to whoever wraps it: closing an fd
            # under a live transport could let a new connection reuse the number while the old
            # transport still has it registered.
            _shutdown(sock)
            raise
        except Exception as exc:
            self.stats.handler_errors += 1
            log.error("%s handler failed for %s: %s", route.value, peer.addr, _describe(exc))
            sock.close()
        finally:
            peer.closed()


class _Slot:
    """One connection's place in the unauthenticated cap; released exactly once."""

    __slots__ = ("_listener",)

    def __init__(self, listener: Listener):
        self._listener: Listener | None = listener

    def release(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener._release_slot()


async def _bind(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"config error: listen: cannot resolve {host!r} ({exc.strerror})") from None
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            # Lets several worker processes share the port; the kernel spreads connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"config error: listen: cannot listen on {host}:{port} "
                          f"({exc.strerror or type(exc).__name__})") from None
    return sock


async def _wait_readable(sock: socket.socket, timeout: float) -> None:
    """Return when `sock` has data or EOF (without reading it), or after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, on_readable)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        pass
    finally:
        # The front-end's transport registers its own reader on this fd next.
        loop.remove_reader(fd)


async def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    try:
        async with asyncio.timeout_at(deadline):
            while len(data) < size:
                chunk = await loop.sock_recv(sock, size - len(data))
                if not chunk:
                    raise _ClosedEarly("closed during the PROXY header")
                data += chunk
    except TimeoutError:
        raise _ClosedEarly("no complete PROXY header in time") from None
    except OSError:
        raise _ClosedEarly("reset during the PROXY header") from None
    return data


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset: nothing left to shut down


def _normalise_address(addr: str) -> str:
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; policy and audit want a.b.c.d.
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _describe(exc: BaseException) -> str:
    # Exception text can quote client input or credentials, so log the type and where it was raised;
    # only a BastionError's safe_message is known to be fit for a log.
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
    safe = f": {exc.safe_message}" if isinstance(exc, BastionError) else ""
    return f"{type(exc).__name__}{where}{safe}"
