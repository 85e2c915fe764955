"""Audit export: JSON lines that verify offline, and CEF with hostile fields escaped."""

from __future__ import annotations

import json
import re

import pytest

from bastion import __version__
from bastion.audit.events import AdminChange, AuthFailure
from bastion.audit.export import cef_header, cef_value, export, parse_since, verify_jsonl
from bastion.errors import UsageError

HOSTILE = "evil|name=x\\y\r\nCEF:0|forged|line"


async def lines_of(services, fmt: str, since=None, actor: str = "") -> list[str]:
    return [line async for line in export(services, fmt, since, actor=actor)]


async def test_jsonl_round_trip_verifies_offline_and_names_an_edit(services):
    await services.audit.emit(AdminChange(actor="tester", action="user.add", object="alice", after={"roles": ["user"]}))
    await services.audit.emit(AuthFailure(actor=HOSTILE, source="10.0.0.9", method="password", reason="wrong"))
    lines = await lines_of(services, "jsonl", actor="cli:auditor")
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[1]["actor"] == HOSTILE and events[0]["details"]["after"] == {"roles": ["user"]}
    assert events[2]["type"] == "audit.read" and events[2]["actor"] == "cli:auditor"  # the export is audited
    assert verify_jsonl(lines) == (True, "3 events verified")
    edited = json.loads(lines[1])
    edited["actor"] = "innocent"
    ok, message = verify_jsonl([lines[0], json.dumps(edited), lines[2]])
    assert not ok and "line 2 (seq 2) was edited" in message
    ok, message = verify_jsonl([lines[0], lines[2]])
    assert not ok and "does not follow" in message


async def test_since_filters_by_time(services):
    await services.audit.emit(AdminChange(actor="tester", action="user.add", object="a"))
    services.clock.advance(3600)
    await services.audit.emit(AdminChange(actor="tester", action="user.add", object="b"))
    later = services.clock.now().isoformat()
    events = [json.loads(line) for line in await lines_of(services, "jsonl", since=later)]
    assert [e["details"]["object"] for e in events] == ["b"]
    assert await lines_of(services, "jsonl", since="2999-01-01") == []
    with pytest.raises(UsageError, match="since"):
        parse_since("yesterday")
    with pytest.raises(UsageError, match="format"):
        await lines_of(services, "xml")


def test_cef_escaping_rules():
    assert cef_header("a|b\\c") == "a\\|b\\\\c"
    assert cef_header("two\r\nlines") == "two lines"
    assert cef_value("a=b\\c|d") == "a\\=b\\\\c|d"  # a pipe needs no escape in the extension
    assert cef_value("l1\nl2\rl3") == "l1\\nl2\\rl3"
    assert "\x1b" not in cef_value("esc\x1b[31m")


async def test_cef_lines_keep_hostile_fields_inside_their_field(services):
    await services.audit.emit(AuthFailure(actor=HOSTILE, source="10.0.0.9", target=HOSTILE, method="password",
                                          reason="bad=reason|x\nnext"))
    [line] = await lines_of(services, "cef")
    assert line.endswith("\n") and line.count("\n") == 1 and "\r" not in line
    # Split the header on unescaped pipes: exactly 8 fields, the extension last.
    fields = re.split(r"(?<!\\)\|", line.rstrip("\n"), maxsplit=7)
    assert fields[:7] == ["CEF:0", "Bastion", "Bastion", __version__, "auth.failure", "auth.failure", "5"]
    extension = fields[7]
    # Every unescaped '=' belongs to a key: the hostile values produced no keys of their own.
    keys = re.findall(r"(?:^| )([A-Za-z0-9]+)=(?<!\\=)", extension)
    assert keys == ["rt", "externalId", "suser", "src", "outcome", "dvchost", "cs1Label", "cs1", "cs2Label", "cs2",
                    "cs3Label", "cs3", "cs4Label", "cs4", "cs5Label", "cs5"]
    assert "suser=evil|name\\=x\\\\y\\r\\nCEF:0|forged|line " in extension
    assert "src=10.0.0.9" in extension and "outcome=failure" in extension
    values = dict(re.findall(r"(?:^| )([A-Za-z0-9]+)=((?:\\.|[^\\=])*?)(?= [A-Za-z0-9]+=|$)", extension))
    unescape = lambda v: re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), v)
    assert unescape(values["suser"]) == HOSTILE and unescape(values["cs1"]) == HOSTILE
    assert json.loads(unescape(values["cs3"]))["reason"] == "bad=reason|x\nnext"
