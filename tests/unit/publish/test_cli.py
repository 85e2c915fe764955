"""`bastion dataset ...` in process: the happy path, and garbage flags that give one clear line and change
nothing (rows, blob files)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bastion.cli import main

TABLES = ("datasets", "dataset_files", "blobs", "dataset_grants", "download_requests", "daily_usage",
          "audit_events")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dataset-cli") / "data"
    assert main(["init", "--data-dir", str(path), "--listen", "127.0.0.1:0"]) == 0
    return path


@pytest.fixture
def cli(data_dir, monkeypatch, capsys):
    for key in [k for k in __import__("os").environ if k.startswith("BASTION_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BASTION_DATA_DIR", str(data_dir))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def snapshot(data_dir: Path) -> dict:
    files = sorted(str(p.relative_to(data_dir)) for p in (data_dir / "blobs").rglob("*")) \
        if (data_dir / "blobs").exists() else []
    with sqlite3.connect(data_dir / "bastion.db") as db:
        rows = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}
    return {"files": files, "rows": rows}


@pytest.fixture(scope="module")
def seeded(data_dir, tmp_path_factory):
    """alice and bob, and a published dataset `sales` (module scope: the garbage tests share it)."""
    import os

    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("BASTION_")]}
    os.environ["BASTION_DATA_DIR"] = str(data_dir)
    try:
        for user in ("alice", "bob"):
            assert main(["user", "add", user, "--role", "user"]) == 0
        source = tmp_path_factory.mktemp("src") / "sales.csv"
        source.write_text("id,phone\n1,13812345678\n", encoding="utf-8")
        assert main(["dataset", "add", "sales", str(source), "--classification", "confidential",
                     "--description", "Q3 sales", "--owner", "bob"]) == 0
        assert main(["dataset", "publish", "sales"]) == 0
    finally:
        del os.environ["BASTION_DATA_DIR"]
        os.environ.update(saved)
    return source


def test_happy_path(cli, seeded, data_dir, tmp_path):
    code, out, _ = cli("dataset", "list", "--json")
    assert code == 0
    [sales] = [d for d in json.loads(out) if d["name"] == "sales"]
    assert (sales["state"], sales["classification"], sales["owner"], sales["version"]) == \
        ("published", "confidential", "bob", 1)
    code, out, _ = cli("dataset", "grant", "sales", "--user", "alice", "--mode", "download-with-approval",
                       "--until", "2099-01-01T00:00:00Z", "--max-downloads", "2", "--min-level", "2", "--json")
    assert code == 0
    grant = json.loads(out)
    assert grant["mode"] == "download-with-approval" and grant["max_downloads"] == 2 and grant["min_level"] == 2
    code, out, _ = cli("dataset", "grant", "sales", "--group", "analysts", "--mode", "view", "--mask", "pii",
                       "--no-watermark", "--json")
    assert code == 0 and json.loads(out)["watermark"] is False
    update = tmp_path / "sales.csv"
    update.write_text("id,phone\n1,13812345678\n2,13912345678\n", encoding="utf-8")
    code, out, _ = cli("dataset", "update", "sales", str(update))
    assert code == 0 and "version 2" in out
    code, out, _ = cli("dataset", "show", "sales", "--json")
    shown = json.loads(out)
    assert shown["version"] == 2 and len(shown["grants"]) == 2 and shown["files"][0]["viewer"] == "table"
    code, out, _ = cli("dataset", "show", "sales")
    assert code == 0 and "grants:" in out and "versions:" in out
    # A request (as the console would make it), then a decision from the command line.
    import asyncio

    from bastion.publish.catalog import Catalog
    from bastion.services import Services
    from bastion.config import load_config

    async def request():
        services = await Services.open(load_config(data_dir))
        try:
            return await Catalog.from_services(services).request_download("alice", "sales")
        finally:
            await services.close()

    request_id = asyncio.run(request())["id"]
    code, out, _ = cli("dataset", "requests", "--pending", "--json")
    assert [r["id"] for r in json.loads(out)] == [request_id]
    code, out, _ = cli("dataset", "decide", str(request_id), "--approve", "--reason", "audit")
    assert code == 0 and "approved" in out and "alice may download sales once" in out
    code, out, err = cli("dataset", "decide", str(request_id), "--refuse", "--reason", "again")
    assert code == 1 and "already approved" in err
    code, _, _ = cli("dataset", "revoke", str(grant["id"]))
    assert code == 0
    code, _, err = cli("dataset", "revoke", str(grant["id"]))
    assert code == 1 and "already revoked" in err
    code, out, _ = cli("dataset", "publish", "sales", "--from", "2099-01-01", "--until", "2099-02-01")
    assert code == 0 and "from 2099-01-01" in out
    code, out, _ = cli("dataset", "unpublish", "sales")
    assert code == 0
    assert cli("dataset", "publish", "sales")[0] == 0


GARBAGE = [
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "edit"], 2, "--mode"),
    (["dataset", "grant", "sales", "--user", "alice"], 2, "--mode"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--until", "yesterday"], 2, "--until"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--until", "2001-01-01"], 2, "--until"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "download", "--max-downloads", "0"], 2,
     "--max-downloads"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "download", "--max-downloads", "-1"], 2,
     "--max-downloads"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "download", "--max-downloads", "abc"], 2,
     "--max-downloads"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--max-downloads", "3"], 2,
     "--max-downloads"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--min-level", "4"], 2, "--min-level"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--min-level", "x"], 2, "--min-level"),
    (["dataset", "grant", "sales", "--user", "alice", "--group", "ops", "--mode", "view"], 2, "--group"),
    (["dataset", "grant", "sales", "--mode", "view"], 2, "--user"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "download", "--mask", "pii"], 2, "mask"),
    (["dataset", "grant", "sales", "--user", "alice", "--mode", "view", "--mask", "everything"], 2, "--mask"),
    (["dataset", "grant", "nosuch", "--user", "alice", "--mode", "view"], 1, "no such dataset"),
    (["dataset", "grant", "sales", "--user", "nobody", "--mode", "view"], 1, "no such user"),
    (["dataset", "grant", "sales", "--group", "Bad Group", "--mode", "view"], 2, "group"),
    (["dataset", "grant", "bad name", "--user", "alice", "--mode", "view"], 2, "invalid dataset name"),
    (["dataset", "publish", "nosuch"], 1, "no such dataset"),
    (["dataset", "publish", "sales", "--until", "yesterday"], 2, "--until"),
    (["dataset", "publish", "sales", "--from", "2099-02-01", "--until", "2099-01-01"], 2, "--from"),
    (["dataset", "unpublish", "nosuch"], 1, "no such dataset"),
    (["dataset", "show", "nosuch"], 1, "no such dataset"),
    (["dataset", "add", "sales", "/etc/hostname"], 1, "already exists"),
    (["dataset", "add", "new", "/nonexistent/file.csv"], 2, "no such file"),
    (["dataset", "add", "new", "/etc/hostname", "--classification", "ultra"], 2, "--classification"),
    (["dataset", "add", "new", "/etc/hostname", "--owner", "nobody"], 1, "no such user"),
    (["dataset", "add", "../evil", "/etc/hostname"], 2, "invalid dataset name"),
    (["dataset", "update", "nosuch", "/etc/hostname"], 1, "no such dataset"),
    (["dataset", "revoke", "abc"], 2, "invalid int"),
    (["dataset", "revoke", "424242"], 1, "no such dataset grant"),
    (["dataset", "decide", "424242", "--approve", "--reason", "x"], 1, "no such download request"),
    (["dataset", "decide", "1", "--approve"], 2, "--reason"),
    (["dataset", "decide", "1", "--approve", "--refuse", "--reason", "x"], 2, "--refuse"),
    (["dataset", "decide", "1", "--approve", "--reason", " "], 2, "reason is required"),
    (["dataset", "frobnicate"], 2, "invalid choice"),
]


def test_garbage_flags_give_one_clear_line_and_change_nothing(cli, seeded, data_dir):
    before = snapshot(data_dir)
    for args, code, fragment in GARBAGE:
        got, out, err = cli(*args)
        assert got == code, (args, got, err)
        assert fragment in err, (args, err)
        assert err.strip().count("\n") == 0 and "Traceback" not in err, (args, err)
        assert err.startswith("bastion: error: ") and out == "", (args, out)
        assert snapshot(data_dir) == before, args
