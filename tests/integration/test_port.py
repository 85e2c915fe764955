"""The shared port under hostile clients, TLS on the same port, and the SSH algorithm policy (ssh-audit)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

from tests.support.clients import ssh

# The first bytes of a real TLS 1.2/1.3 ClientHello record.
HALF_CLIENT_HELLO = bytes.fromhex("160301020001000200fc03035b90")


def test_hostile_first_packets_do_not_stop_real_clients(testbed):
    alice = testbed.user("exec")
    silent = socket.create_connection(("127.0.0.1", testbed.port))
    half_tls = socket.create_connection(("127.0.0.1", testbed.port))
    half_tls.sendall(HALF_CLIENT_HELLO)
    garbage = socket.create_connection(("127.0.0.1", testbed.port))
    garbage.sendall(b"\x00\xffGET-NOT-SSH\r\n" + os.urandom(64))
    garbage.settimeout(10)
    try:
        result = ssh(testbed.port, alice, f"{alice.name}:web01", "echo still-served")
        assert result.returncode == 0 and result.stdout == b"still-served\n"
        try:
            assert garbage.recv(100) == b""  # closed, and nothing sent back
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: a reset is a close too
    finally:
        for sock in (silent, half_tls, garbage):
            sock.close()


def test_garbage_after_the_ssh_banner_is_dropped(testbed):
    alice = testbed.user("exec")
    with socket.create_connection(("127.0.0.1", testbed.port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-evil\r\n" + os.urandom(4096))
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            pass
    assert data.startswith(b"SSH-2.0-Bastion")
    assert ssh(testbed.port, alice, f"{alice.name}:web01", "true").returncode == 0


def test_tls_on_the_same_port_answers_healthz(testbed):
    context = ssl.create_default_context(cafile=str(testbed.data_dir / "keys" / "tls.crt"))
    with socket.create_connection(("127.0.0.1", testbed.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.3", "TLSv1.2")
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(4096):
                response += chunk
    assert response.startswith(b"HTTP/1.1 200") and b'"ok"' in response
    assert b"Strict-Transport-Security" in response


PQ_WARNING = "does not provide protection against post-quantum attacks"


def ssh_audit(port: int) -> dict:
    ssh_audit = Path(sys.executable).parent / "ssh-audit"
    result = subprocess.run([str(ssh_audit), "-j", "-p", str(port), "127.0.0.1"], capture_output=True, timeout=120)
    return json.loads(result.stdout)


def problems(report: dict) -> list[tuple]:
    found = []
    for section in ("kex", "key", "enc", "mac"):
        for entry in report.get(section, []):
            notes = entry.get("notes", {})
            if notes.get("fail") or notes.get("warn"):
                found.append((section, entry.get("algorithm"), notes.get("fail"), notes.get("warn")))
    return found


def test_ssh_audit_default_policy_only_warns_about_classic_kex_kept_for_old_clients(testbed):
    report = ssh_audit(testbed.port)
    offered = {entry["algorithm"] for entry in report["enc"]}
    assert not any(alg.endswith("-cbc") for alg in offered)
    assert not any("sha1" in entry["algorithm"] for entry in report["mac"] + report["kex"])
    assert any(entry["algorithm"] == "kex-strict-s-v00@openssh.com" for entry in report["kex"])
    assert report["kex"][0]["algorithm"] == "mlkem768x25519-sha256"
    remaining = [p for p in problems(report) if not (p[0] == "kex" and p[2] is None and p[3] == [PQ_WARNING])]
    assert remaining == []


def test_ssh_audit_post_quantum_only_reports_no_failures_or_warnings(testbed):
    from tests.support.gateway import GatewayProcess

    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_SSH_POST_QUANTUM_ONLY": "true"}).start()
    try:
        report = ssh_audit(gateway.port)
    finally:
        gateway.stop()
    assert [e["algorithm"] for e in report["kex"] if not e["algorithm"].startswith(("kex-strict", "ext-info"))] == \
        ["mlkem768x25519-sha256"]
    assert problems(report) == []


AES_GCM_ONLY = "aes128-gcm@openssh.com,aes256-gcm@openssh.com"


def test_ssh_ciphers_narrows_what_the_port_offers_and_a_stock_client_gets_aes_gcm(testbed):
    # A stock OpenSSH client asks for chacha20-poly1305 first, and the client's order picks (RFC 4253,
    # 7.1): only leaving it out of the offer gives such a client AES-GCM.
    from tests.support.gateway import GatewayProcess

    alice = testbed.user("exec")
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_SSH_CIPHERS": AES_GCM_ONLY}).start()
    try:
        offered = [entry["algorithm"] for entry in ssh_audit(gateway.port)["enc"]]
        stock = ssh(gateway.port, alice, f"{alice.name}:web01", "echo through", extra=["-o", "LogLevel=DEBUG1"])
        insisting = ssh(gateway.port, alice, f"{alice.name}:web01", "echo through",
                        extra=["-c", "chacha20-poly1305@openssh.com", "-o", "LogLevel=INFO"])
    finally:
        gateway.stop()
    assert offered == AES_GCM_ONLY.split(",")
    assert stock.returncode == 0 and stock.stdout == b"through\n"
    assert b"server->client cipher: aes128-gcm@openssh.com" in stock.stderr
    assert insisting.returncode == 255 and insisting.stdout == b""
    assert b"no matching cipher found" in insisting.stderr


def test_the_default_offer_lets_a_stock_client_pick_chacha20(testbed):
    # The other half of the test above: without `ssh.ciphers` the client's first choice stands.
    alice = testbed.user("exec")
    stock = ssh(testbed.port, alice, f"{alice.name}:web01", "echo through",
                extra=["-o", "LogLevel=DEBUG1"])
    assert stock.returncode == 0 and stock.stdout == b"through\n"
    assert b"server->client cipher: chacha20-poly1305@openssh.com" in stock.stderr
