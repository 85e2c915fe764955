"""The lexical resolver of the virtual `datasets` tree, and the SFTP server's deny-by-default surface."""

from __future__ import annotations

import inspect

import asyncssh
import pytest
from hypothesis import given, strategies as st

from bastion.ssh.datasets import DatasetsSFTPServer
from bastion.ssh.virtualpath import MAX_DEPTH, MAX_PATH_BYTES, render, resolve


@pytest.mark.parametrize("path, parts", [
    (b"/", ()), (b"", ()), (b".", ()), (b"//", ()), (b"/./.", ()),
    (b"..", ()), (b"/../../..", ()), (b"../../etc/passwd", ("etc", "passwd")),
    (b"/ds/data.csv", ("ds", "data.csv")), (b"ds//data.csv/", ("ds", "data.csv")),
    (b"/ds/../other/x", ("other", "x")), (b"/ds/dir/./a.csv", ("ds", "dir", "a.csv")),
    (b"%2e%2e/%2e%2e/etc", ("%2e%2e", "%2e%2e", "etc")),  # never decoded: just names
    ("／ds／．．".encode(), ("／ds／．．",)),  # fullwidth solidus and dots are ordinary characters
    (b"...", ("...",)), (b"~", ("~",)), (b"~root/.ssh", ("~root", ".ssh")),
])
def test_resolves_lexically_under_the_root(path, parts):
    assert resolve(path) == parts


@pytest.mark.parametrize("path", [
    b"a\x00b", b"\xff\xfe", b"\xc0\xaf", b"ds\\..\\x", b"ds/\x1b[2J", "ds/\u202e".encode(), "ds/\u200b".encode(),
    "a\u2028b".encode(), b"x" * (MAX_PATH_BYTES + 1), b"/a" * (MAX_DEPTH + 1), b"\xed\xa0\x80",
])
def test_refuses_what_can_name_nothing(path):
    assert resolve(path) is None


def test_refuses_non_bytes():
    assert resolve("ds/data.csv") is None and resolve(None) is None


@given(st.binary(max_size=200))
def test_any_input_resolves_to_clean_components_or_nothing(path):
    parts = resolve(path)
    if parts is None:
        return
    assert all(p not in ("", ".", "..") and "/" not in p and "\\" not in p and "\x00" not in p for p in parts)
    assert render(parts).startswith(b"/") and resolve(render(parts)) == parts  # canonical and stable


@given(st.lists(st.sampled_from(["..", ".", "", "a", "b"]), max_size=12))
def test_dot_dot_never_climbs_above_the_root(parts):
    resolved = resolve("/".join(parts).encode())
    depth = 0
    for part in parts:
        depth = max(0, depth - 1) if part == ".." else depth + (part not in ("", "."))
    assert resolved is not None and len(resolved) == depth


def test_every_sftp_server_method_is_overridden():
    """asyncssh's defaults act on the gateway's own filesystem: the virtual server must define each one."""
    inherited = {name for name, member in inspect.getmembers(asyncssh.SFTPServer)
                 if callable(member) and not name.startswith("__")}
    missing = sorted(name for name in inherited if name not in vars(DatasetsSFTPServer))
    assert not missing, f"not overridden: {missing}"
