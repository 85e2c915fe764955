"""Search through the real gateway: a command typed with a backspace and recalled with Up is found, sealed."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from sqlalchemy import select

from bastion.search.index import index_session, search
from bastion.store.models import SearchEntry, Session
from tests.support.clients import paramiko_client
from tests.support.console import ConsoleClient
from tests.support.recordings import bastion_cli, wait_for_sessions


class Terminal:
    """A paramiko shell typed into like a person: each key's echo arrives before the next key."""

    def __init__(self, chan):
        self.chan = chan
        self.seen = b""

    def drain(self) -> int:
        while self.chan.recv_ready():
            self.seen += self.chan.recv(65536)
        return len(self.seen)

    def keys(self, data: bytes) -> None:
        self.chan.send(data)
        time.sleep(0.3)
        self.drain()

    def wait_for(self, marker: bytes, after: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.seen[after:] and time.monotonic() < deadline:
            time.sleep(0.02)
            self.drain()
        assert marker in self.seen[after:], self.seen[-500:]


def wait_indexed(testbed, session_id: str, timeout: float = 60) -> None:
    # Until the registry hook is wired this indexes the session itself; afterwards it is idempotent.
    assert testbed.directory.call(lambda services: index_session(services, session_id))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = testbed.directory.call(lambda services: _session(services, session_id))
        if row.indexed_at is not None:
            return
        time.sleep(0.2)
    raise AssertionError("the session was not indexed")


async def _session(services, session_id: str) -> Session:
    async with services.db() as db:
        return await db.get(Session, session_id)


async def _entries(services, session_id: str) -> list[SearchEntry]:
    async with services.db() as db:
        return list((await db.execute(select(SearchEntry).where(SearchEntry.session_id == session_id))).scalars())


@pytest.fixture(scope="module")
def typed_session(testbed):
    """A shell where `echo SEARCH-ME` is typed with a typo fixed by backspace, then recalled with Up."""
    login = testbed.user("shell")
    client = paramiko_client(testbed.port, login, f"{login.name}:web01")
    try:
        term = Terminal(client.invoke_shell(term="xterm", width=100, height=30))
        time.sleep(1.0)  # the shell's prompt
        term.keys(b"unset HISTFILE")  # keep this machine's own history file untouched
        term.keys(b"\r")
        term.keys(b"echo SEARCH-MEE")
        term.keys(b"\x7f")  # backspace
        seen = term.drain()
        term.keys(b"\r")
        term.wait_for(b"SEARCH-ME\r\n", after=seen)
        term.keys(b"echo unrelated-$((6*7))")
        seen = term.drain()
        term.keys(b"\r")
        term.wait_for(b"unrelated-42\r\n", after=seen)
        term.keys(b"\x1b[A")  # Up: echo unrelated-$((6*7))
        term.keys(b"\x1b[A")  # Up: echo SEARCH-ME
        seen = term.drain()
        term.keys(b"\r")
        term.wait_for(b"SEARCH-ME\r\n", after=seen)
        term.keys(b"exit\r")
        term.chan.recv_exit_status()
    finally:
        client.close()
    session = wait_for_sessions(testbed, login.name)[0]
    wait_indexed(testbed, session["id"])
    return login, session["id"]


def test_search_finds_the_command_as_it_ran(testbed, typed_session):
    login, session_id = typed_session
    hits = testbed.directory.call(lambda services: search(services, "search-me", user=login.name, actor="test"))
    commands = [h for h in hits if h["kind"] == "command"]
    assert [h["text"] for h in commands] == ["echo SEARCH-ME", "echo SEARCH-ME"]  # typed, then recalled
    assert all(h["session_id"] == session_id and h["target"] == "web01" for h in hits)
    assert commands[0]["offset"] < commands[1]["offset"]
    assert "SEARCH-ME" in [h["text"] for h in hits if h["kind"] == "output"]
    assert testbed.directory.call(lambda services: search(services, "SEARCH-MEE", user=login.name,
                                                          actor="test")) == []
    unrelated = testbed.directory.call(lambda services: search(services, "unrelated", user=login.name, actor="t"))
    assert [h["text"] for h in unrelated if h["kind"] == "command"] == ["echo unrelated-$((6*7))"]
    assert "unrelated-42" in [h["text"] for h in unrelated if h["kind"] == "output"]


def test_the_index_is_not_plaintext_in_the_database(testbed, typed_session):
    _, session_id = typed_session
    entries = testbed.directory.call(lambda services: _entries(services, session_id))
    assert entries and {e.kind for e in entries} == {"command", "output"}
    for entry in entries:
        assert b"SEARCH" not in entry.sealed and b"unrelated" not in entry.sealed
    row = testbed.directory.call(lambda services: _session(services, session_id))
    assert row.index_key is not None and b"SEARCH" not in row.index_key


def _cli_wired() -> bool:
    from bastion.cli import build_parser

    try:
        build_parser().parse_args(["search", "x"])
    except SystemExit:
        return False
    return True


def test_cli_search(testbed, typed_session):
    if not _cli_wired():
        pytest.skip("`bastion search` is not registered in bastion/cli.py yet")
    login, session_id = typed_session
    result = bastion_cli(testbed.data_dir, "search", "search-me", "--user", login.name, "--json")
    assert result.returncode == 0, result.stderr.decode()
    hits = json.loads(result.stdout)
    assert [h["text"] for h in hits if h["kind"] == "command"] == ["echo SEARCH-ME", "echo SEARCH-ME"]
    table = bastion_cli(testbed.data_dir, "search", "SEARCH-ME", "--user", login.name, "--target", "web01")
    assert table.returncode == 0 and session_id in table.stdout.decode()
    assert b"echo SEARCH-ME" in table.stdout
    bad = bastion_cli(testbed.data_dir, "search", "x", "--since", "yesterday")
    assert bad.returncode == 2 and b"ISO 8601" in bad.stderr


def _console_wired() -> bool:
    from bastion.console.app import all_routes
    from bastion.console.render import WEB_DIR

    return any(route.path == "/api/v1/audit/search" for route in all_routes(WEB_DIR))


async def test_console_search_links_into_the_replay(testbed, typed_session):
    if not _console_wired():
        pytest.skip("the search routes are not in the console's route table yet")
    login, session_id = typed_session
    auditor = testbed.user(None, totp=True, prefix="au", roles=("auditor",))
    async with ConsoleClient(testbed.port) as console:
        await console.login(auditor.name, auditor.password, auditor.totp_secret, level=2)
        status, body, _ = await console.get(f"/api/v1/audit/search?q=SEARCH-ME&user={quote(login.name)}")
        assert status == 200, body
        data = json.loads(body)
        assert data["complete"] and [h["text"] for h in data["hits"] if h["kind"] == "command"] == \
            ["echo SEARCH-ME", "echo SEARCH-ME"]
        offset = data["hits"][0]["offset"]
        status, page, _ = await console.get(f"/audit/search?q=SEARCH-ME&user={quote(login.name)}")
        assert status == 200 and f'href="/audit/sessions/{session_id}?t={offset}"' in page
        status, page, _ = await console.get(f"/audit/sessions/{session_id}?t={offset}")
        assert status == 200 and "/static/replay.js" in page
        status, _, _ = await console.get("/api/v1/audit/search?q=")
        assert status == 400
        status, _, _ = await console.get("/api/v1/audit/search?q=x&since=yesterday")
        assert status == 400
    user = testbed.user("shell")
    async with ConsoleClient(testbed.port) as console:
        await console.login(user.name, user.password)
        status, _, _ = await console.get("/api/v1/audit/search?q=SEARCH-ME")
        assert status == 404  # not an auditor: looks missing
