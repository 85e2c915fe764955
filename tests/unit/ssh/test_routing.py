"""Login-name routing."""

import pytest

from bastion.ssh.routing import Route, parse_login


@pytest.mark.parametrize("login, route", [
    ("alice", Route("alice")),
    ("alice:web01", Route("alice", "web01")),
    ("alice#web01", Route("alice", "web01")),
    ("alice:web01:root", Route("alice", "web01", "root")),
    ("alice#web01#deploy", Route("alice", "web01", "deploy")),
    ("alice@web01", Route("alice", "web01")),
    ("alice@web01@root", Route("alice", "web01", "root")),
])
def test_valid_logins(login, route):
    assert parse_login(login) == route


@pytest.mark.parametrize("login", ["", ":", "alice:", ":web01", "a:b:c:d", "alice#web01:root", "alice@web01:root", "a@b#c", "al ice",
                                   "alice:web/01", "alice\x00", "a" * 300, "alice:../etc", "-rf"])
def test_garbage_logins_route_nowhere(login):
    assert parse_login(login) is None
