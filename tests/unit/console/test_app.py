"""Console app and ConsoleServer over real TLS on the listener: routes, headers, TLS settings."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import warnings
from dataclasses import dataclass

import aiohttp
import pytest

from bastion.config import load_config
from bastion.console.app import SECURITY_HEADERS, ConsoleServer
from bastion.errors import ConfigError, VaultError
from bastion.keys import create_tls_material
from bastion.listener import Listener, Peer
from bastion.tlsconfig import TLS12_CIPHERS, server_context


@dataclass
class Served:
    listener: Listener
    console: ConsoleServer
    cert: str

    @property
    def base(self) -> str:
        host, port = self.listener.address
        return f"https://{host}:{port}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)

    async def handshake(self, context: ssl.SSLContext) -> ssl.SSLObject:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*self.listener.address, ssl=context, server_hostname="localhost"), 5)
        try:
            return writer.get_extra_info("ssl_object")
        finally:
            writer.close()


async def _no_ssh(sock: socket.socket, peer: Peer) -> None:
    sock.close()


@pytest.fixture
async def served(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    cert, _ = create_tls_material(keys)
    config = load_config(tmp_path, environ={"BASTION_LISTEN": "127.0.0.1:0"})
    console = ConsoleServer(config)
    await console.start()
    listener = Listener(config, _no_ssh, console.handle)
    await listener.start()
    yield Served(listener, console, str(cert))
    await listener.close(cancel_handlers=True)
    await console.close()


async def _get(served: Served, path: str, method: str = "GET") -> tuple[int, dict, object]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, served.base + path, ssl=served.client_context()) as response:
            body = await response.json() if method != "HEAD" else None
            return response.status, dict(response.headers), body


def _assert_security_headers(headers: dict) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, name
    assert "aiohttp" not in headers["Server"] and "Python" not in headers["Server"]


async def test_healthz(served):
    status, headers, body = await _get(served, "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["Content-Type"].startswith("application/json")
    _assert_security_headers(headers)


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/anything"), ("GET", "/healthz/"), ("GET", "/admin/../healthz2"),
    ("POST", "/healthz"), ("DELETE", "/healthz"), ("PUT", "/nothing"),
])
async def test_everything_else_is_404_json(served, method, path):
    status, headers, body = await _get(served, path, method)
    assert (status, body) == (404, {"error": "not found"})
    _assert_security_headers(headers)


async def test_access_log_omits_query_string(served, caplog):
    with caplog.at_level(logging.INFO, logger="bastion.console.access"):
        status, _, _ = await _get(served, "/healthz?token=s3cret-approval")
        await asyncio.sleep(0.05)  # the access log line is written after the response
    assert status == 200
    assert "/healthz" in caplog.text and "s3cret" not in caplog.text


async def test_close_ends_keepalive_connections(served):
    reader, writer = await asyncio.open_connection(*served.listener.address, ssl=served.client_context(),
                                                   server_hostname="localhost")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await served.console.close()
    rest = await asyncio.wait_for(reader.read(), 5)
    assert b"HTTP/1.1" not in rest.split(b"}", 1)[-1]  # nothing after the first body; then EOF
    writer.close()


async def test_handle_before_start_closes_socket(tmp_path):
    console = ConsoleServer(load_config(tmp_path, environ={}), ssl_context=ssl.create_default_context())
    left, right = socket.socketpair()
    with pytest.raises(RuntimeError):
        await console.handle(left, Peer("127.0.0.1", 1))
    assert left.fileno() == -1
    right.close()


# --- TLS settings -----------------------------------------------------------------------------------

async def test_tls13_negotiated_by_default(served):
    tls = await served.handshake(served.client_context())
    assert tls.version() == "TLSv1.3"
    assert tls.selected_alpn_protocol() in (None, "http/1.1")


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                   "ECDHE-ECDSA-CHACHA20-POLY1305"])
async def test_tls12_with_ecdhe_aead_suite(served, suite):
    context = served.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    tls = await served.handshake(context)
    assert tls.version() == "TLSv1.2" and tls.cipher()[0] == suite


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES128-SHA", "AES128-GCM-SHA256"])
async def test_tls12_without_ecdhe_aead_is_refused(served, suite, caplog):
    context = served.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite + ":@SECLEVEL=0")
    with caplog.at_level(logging.INFO, logger="bastion.console.app"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served.handshake(context)
        await asyncio.sleep(0.05)
    assert "NO_SHARED_CIPHER" in caplog.text  # refused by the server, not by the client


async def test_tls11_client_is_refused(served, caplog):
    context = served.client_context()
    # Make the client really offer TLS 1.1 (OpenSSL 3 refuses to at its default security level).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with caplog.at_level(logging.INFO, logger="bastion.console.app"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served.handshake(context)
        await asyncio.sleep(0.05)
    assert "TLS handshake from 127.0.0.1 failed" in caplog.text
    assert "UNSUPPORTED_PROTOCOL" in caplog.text  # refused by the server, not by the client


def test_server_context_settings(tmp_path):
    create_tls_material(tmp_path)
    context = server_context(tmp_path)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and set(tls12) <= set(TLS12_CIPHERS)
    tls13 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"]
    assert tls13 and all(c["aead"] for c in tls13)


def test_server_context_refuses_readable_key(tmp_path):
    _, key = create_tls_material(tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(VaultError):
        server_context(tmp_path)


def test_server_context_missing_cert_is_config_error(tmp_path):
    cert, _ = create_tls_material(tmp_path)
    cert.unlink()
    with pytest.raises(ConfigError, match="bastion init"):
        server_context(tmp_path)
