"""The HTTPS side of the real listener, scanned by sslyze against Mozilla's "intermediate" profile."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import dataclass

import pytest

from bastion.config import load_config
from bastion.console.app import ConsoleServer
from bastion.keys import create_tls_material
from bastion.listener import Listener, Peer
from bastion.pki import ensure_device_ca
from bastion.tlsconfig import server_context
from tests.support.sslyze_env import sslyze_command


_ISSUE = re.compile(r"^\s+\* (\w+): (.*)$")


@dataclass
class Compliance:
    compliant: bool
    issues: dict[str, str]
    output: str


async def _no_ssh(sock: socket.socket, peer: Peer) -> None:
    sock.close()


def _parse(output: str) -> Compliance:
    _, found, section = output.partition("COMPLIANCE AGAINST TLS CONFIGURATION")
    if not found:
        raise AssertionError(f"sslyze printed no compliance section:\n{output}")
    issues = dict(m.groups() for m in map(_ISSUE.match, section.splitlines()) if m)
    return Compliance("OK - Compliant." in section, issues, output)


@pytest.fixture(scope="module")
async def scan(tmp_path_factory) -> Compliance:
    """One sslyze run against the shipped certificate and TLS context, served by the real listener."""
    command = sslyze_command()
    if command is None:
        pytest.skip("sslyze is not installed: `make sslyze` creates .venv-sslyze")
    data = tmp_path_factory.mktemp("tls-profile")
    keys = data / "keys"
    keys.mkdir()
    cert, _ = create_tls_material(keys)
    ensure_device_ca(keys)
    config = load_config(data, environ={"BASTION_LISTEN": "127.0.0.1:0"})
    # exactly the context the gateway serves: device client certificates optional
    console = ConsoleServer(config, ssl_context=server_context(keys, client_ca=True))
    await console.start()
    listener = Listener(config, _no_ssh, console.handle)
    await listener.start()
    try:
        host, port = listener.address
        # The certificate is self-signed, so it is given as the trust anchor, as an operator's
        # browsers would be given it; path validation is then about the certificate's form.
        process = await asyncio.create_subprocess_exec(
            *command, "--mozilla_config=intermediate", f"--certinfo_ca_file={cert}", f"{host}:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await listener.close(cancel_handlers=True)
        await console.close()
    return _parse(output.decode(errors="replace"))


async def test_scan_reached_the_console(scan):
    assert "SCANS COMPLETED" in scan.output and "TLS 1.3 Cipher Suites" in scan.output


async def test_mozilla_intermediate_compliant(scan):
    assert scan.compliant and not scan.issues, scan.issues or scan.output
