"""The `USER#datasets` login: a read-only SFTP view of published datasets, through the real sftp client and paramiko."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import stat as statmod
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bastion.publish.catalog import Catalog
from bastion.store.models import DailyUsage, Dataset, DatasetFile, DatasetGrant, DownloadRequest, User
from tests.support.clients import COMMON, Login, paramiko_client, scp, sftp, ssh
from tests.support.recordings import bastion_cli, export_events, wait_for_audit, wait_for_sessions

_names = itertools.count(1)
NEVER = "zz-never-existed"


# --- helpers ---------------------------------------------------------------------------------------------


def run_catalog(testbed, method: str, *args, **kwargs):
    return testbed.directory.call(lambda s: getattr(Catalog.from_services(s, actor="test"), method)(*args, **kwargs))


def user(testbed, prefix: str = "d") -> Login:
    """A user with an SSH key (sftp -b runs in batch mode: keys only) and no target grant."""
    return testbed.user(None, key=True, prefix=prefix)


def dataset(testbed, tmp_path: Path, content: bytes | None = None, *, files: dict[str, bytes] | None = None,
            classification: str = "internal", publish: bool = True) -> tuple[str, dict[str, bytes]]:
    """A new dataset of one file (data.csv) or of `files`, published unless asked otherwise."""
    name = f"ds{next(_names)}{testbed.backend[:2]}"
    files = files or {"data.csv": content if content is not None else b"id,amount\n1,10\n2,20\n"}
    source = tmp_path / f"src-{name}"
    if len(files) == 1 and "/" not in next(iter(files)):
        source.mkdir()
        (path, data), = files.items()
        (source / path).write_bytes(data)
        source = source / path
    else:
        for path, data in files.items():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            (source / path).write_bytes(data)
    run_catalog(testbed, "add", name, str(source), classification=classification)
    if publish:
        run_catalog(testbed, "publish", name)
    return name, files


def grant(testbed, name: str, login: Login, mode: str = "download", **kw) -> int:
    return run_catalog(testbed, "grant", name, user=login.name, mode=mode, **kw)["id"]


def db(testbed, work):
    async def run(services):
        async with services.db() as session, session.begin():
            return await work(session)
    return testbed.directory.call(run)


def ls_root(testbed, login: Login, spec: str | None = None) -> list[str]:
    result = sftp(testbed.port, login, spec or f"{login.name}#datasets", "ls -1 /\n")
    assert result.returncode == 0, result.stderr
    return [line.strip().rstrip("/").lstrip("/") for line in result.stdout.decode().splitlines()
            if line.strip() and not line.startswith("sftp>")]


def get(testbed, login: Login, remote: str, local: Path) -> subprocess.CompletedProcess:
    return sftp(testbed.port, login, f"{login.name}#datasets", f'get "{remote}" "{local}"\n')


def shape(stderr: bytes, *names: str) -> str:
    """The client's error text with the names in it replaced, to compare refusals with a missing name."""
    text = stderr.decode(errors="replace")
    for name in names:
        text = text.replace(name, "NAME")
    return text


def catalog_counts(testbed) -> tuple:
    async def count(session):
        out = []
        for model in (Dataset, DatasetFile, DatasetGrant, DownloadRequest):
            out.append((await session.execute(select(func.count()).select_from(model))).scalar_one())
        out.append(tuple((await session.execute(select(DatasetGrant.id, DatasetGrant.downloads)
                                                 .order_by(DatasetGrant.id))).all()))
        return tuple(out)
    return db(testbed, count)


def blob_listing(testbed) -> list[tuple[str, int, float]]:
    root = testbed.data_dir / "blobs"
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*") if p.is_file())


# --- the basics ------------------------------------------------------------------------------------------


def test_download_lists_only_downloadable_and_bytes_match_with_audit(testbed, tmp_path):
    alice = user(testbed)
    content = os.urandom(3 * 1024 * 1024 + 17)  # several blob chunks and a ragged end
    down, _ = dataset(testbed, tmp_path, files={"data.bin": content})
    viewed, _ = dataset(testbed, tmp_path)
    grant(testbed, down, alice, "download", max_downloads=2)
    grant(testbed, viewed, alice, "view")
    assert ls_root(testbed, alice) == [down]
    result = get(testbed, alice, f"/{down}/data.bin", tmp_path / "got.bin")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got.bin").read_bytes() == content
    digest = hashlib.sha256(content).hexdigest()
    events = wait_for_audit(testbed, "dataset.download", alice.name)
    assert [(e["details"]["size"], e["details"]["sha256"], e["details"]["path"]) for e in events] == \
        [(len(content), digest, "data.bin")]
    transfers = wait_for_audit(testbed, "transfer", alice.name,
                      until=lambda ev: any(e["type"] == "transfer" for e in ev))
    assert any(e["type"] == "transfer" and e["details"]["size"] == len(content) for e in transfers)
    starts = wait_for_audit(testbed, "session.", alice.name, until=lambda ev: any(e["type"] == "session.end" for e in ev))
    assert {"session.start", "session.end"} <= {e["type"] for e in starts}
    assert all(e["target"] == "datasets" for e in starts)
    # max-downloads counts: the second download is the last one, then the dataset is gone for alice
    assert get(testbed, alice, f"{down}/data.bin", tmp_path / "again.bin").returncode == 0
    assert ls_root(testbed, alice) == []
    third = get(testbed, alice, f"{down}/data.bin", tmp_path / "third.bin")
    assert third.returncode != 0 and not (tmp_path / "third.bin").exists()
    downloads = db(testbed, lambda s: _scalar(s, select(DatasetGrant.downloads).where(
        DatasetGrant.dataset_id == select(Dataset.id).where(Dataset.name == down).scalar_subquery())))
    assert downloads == 2


def test_one_approval_fetches_the_whole_dataset_once_with_sftp_get_r(testbed, tmp_path):
    """A dataset of several files under download-with-approval: `get -r` takes every file on one approval; the
    files are then gone from the listing, and a file again needs a new approval."""
    alice = user(testbed)
    files = {"a.csv": b"id,amount\n1,10\n", "notes/b.txt": os.urandom(70_000), "notes/deep/c.bin": b"\0" * 5}
    name, _ = dataset(testbed, tmp_path, files=files)
    grant(testbed, name, alice, "download-with-approval")
    assert ls_root(testbed, alice) == []                                  # nothing until approved
    request = run_catalog(testbed, "request_download", alice.name, name)
    run_catalog(testbed, "decide", request["id"], True, "quarterly audit")
    local = tmp_path / "copy"
    result = sftp(testbed.port, alice, f"{alice.name}#datasets", f'get -r "/{name}" "{local}"\n')
    assert result.returncode == 0, result.stderr
    assert {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()} == files
    events = wait_for_audit(testbed, "dataset.download", alice.name, until=lambda ev: len(ev) >= len(files))
    assert sorted(e["details"]["path"] for e in events) == sorted(files)
    assert len({e["details"]["copy_id"] for e in events}) == 1 and {e["details"]["downloads"] for e in events} == {1}
    assert ls_root(testbed, alice) == []
    again = get(testbed, alice, f"/{name}/a.csv", tmp_path / "again.csv")
    assert again.returncode != 0 and not (tmp_path / "again.csv").exists()
    assert [r["status"] for r in run_catalog(testbed, "requests")
            if r["id"] == request["id"]] == ["used"]


def test_a_file_fetched_again_is_counted_under_a_grant_that_can_serve_it(testbed, tmp_path):
    """Each open is decided for its file: once a copy (under a grant with one download) has served a.csv,
    a.csv again goes to the user's other, unlimited grant instead of being refused; b.txt still joins the copy."""
    alice = user(testbed)
    name, files = dataset(testbed, tmp_path, files={"a.csv": b"id\n1\n", "b.txt": b"text\n"})
    once = grant(testbed, name, alice, "download", max_downloads=1)
    always = grant(testbed, name, alice, "download")
    for path in ("a.csv", "a.csv", "b.txt"):
        result = get(testbed, alice, f"/{name}/{path}", tmp_path / "got")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "got").read_bytes() == files[path]
    events = wait_for_audit(testbed, "dataset.download", alice.name, until=lambda ev: len(ev) >= 3)
    assert [(e["details"]["path"], e["details"]["grant_id"]) for e in sorted(events, key=lambda e: e["seq"])] == \
        [("a.csv", once), ("a.csv", always), ("b.txt", once)]


def _read_until_cut(handle, timeout: float = 15.0) -> None:
    """Read an open file (or list the root, given an SFTP client) until the gateway cuts the session off;
    the timeout only guards against a hang (a session never cut fails here)."""
    import paramiko

    started = time.monotonic()
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        while time.monotonic() - started < timeout:
            if hasattr(handle, "listdir"):
                handle.listdir("/")
            else:
                handle.seek(0)
                handle.read(4096)
            time.sleep(0.05)


def test_a_datasets_session_is_listed_recorded_and_ended_by_kill(testbed, tmp_path):
    """A `USER#datasets` SFTP session is a live session like any other: `bastion sessions list` shows it while
    it runs (the re-checks every 0.5 s leave it be), `bastion sessions kill` ends it, and its recording holds
    a marker per file served and refused."""
    alice = user(testbed)
    files = {"a.csv": b"id\n1\n", "big.bin": os.urandom(256 * 1024)}
    name, _ = dataset(testbed, tmp_path, files=files)
    grant(testbed, name, alice, "download")
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        session = client.open_sftp()
        with session.open(f"/{name}/a.csv") as handle:
            assert handle.read() == files["a.csv"]
        with pytest.raises(OSError):
            session.open(f"/{NEVER}/x.csv")
        big = session.open(f"/{name}/big.bin")
        assert big.read(1000) == files["big.bin"][:1000]
        [live] = wait_for_sessions(testbed, alice.name, ended=False)
        assert (live["target"], live["kind"], live["status"], live["account"]) == ("datasets", "sftp", "live", "")
        time.sleep(1.5)  # three re-check passes
        big.seek(0)
        assert big.read(1000) == files["big.bin"][:1000]
        killed = bastion_cli(testbed.data_dir, "sessions", "kill", live["id"], "--reason", "exfiltration suspected")
        assert killed.returncode == 0, killed.stderr
        _read_until_cut(big)
    finally:
        client.close()
    [ended] = wait_for_sessions(testbed, alice.name)
    assert ended["id"] == live["id"] and "exfiltration suspected" in ended["end_reason"]
    assert ended["exit_status"] == 255 and ended["bytes_down"] >= len(files["a.csv"]) + 2000
    _, events = export_events(testbed.data_dir, live["id"], tmp_path / "datasets.cast")
    markers = [e[2] for e in events if e[1] == "m"]
    assert f"sftp download {name}/a.csv {len(files['a.csv'])} bytes" in markers
    assert f"sftp denied open for reading /{NEVER}/x.csv" in markers
    assert any(m.startswith(f"sftp download {name}/big.bin ") for m in markers)   # closed by the kill
    ends = wait_for_audit(testbed, "session.end", alice.name)
    assert [e["session_id"] for e in ends] == [live["id"]] and "exfiltration suspected" in ends[0]["details"]["reason"]
    downloads = wait_for_audit(testbed, "dataset.download", alice.name, until=lambda ev: len(ev) >= 2)
    assert {e["session_id"] for e in downloads} == {live["id"]}   # each download names its session


@pytest.mark.parametrize("change", [("user", "disable", "NAME"),
                                    ("user", "set", "NAME", "--device-policy", "required")],
                         ids=["user-disabled", "device-policy-required"])
def test_a_change_the_recheck_sees_ends_a_datasets_session(testbed, tmp_path, change):
    """The session's own re-check: no file is open (an open download re-checks its grant by itself), the
    listing is merely empty or unchanged, yet the session ends within the re-check interval when the user
    is disabled or a device is now required (as the login itself would demand)."""
    alice = user(testbed)
    name, _ = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        session = client.open_sftp()
        assert session.listdir("/") == [name]
        changed = bastion_cli(testbed.data_dir, *[alice.name if part == "NAME" else part for part in change])
        assert changed.returncode == 0, changed.stderr
        _read_until_cut(session)
    finally:
        client.close()
    assert wait_for_sessions(testbed, alice.name)[0]["end_reason"] == "access revoked or expired"


def test_a_datasets_channel_closed_before_its_first_sftp_packet_ends_its_session(testbed, tmp_path):
    """The SFTP subsystem opened (the session begins at once), then closed before the client's INIT: asyncssh
    never runs the server's exit, yet the session must end (row, recording, session.end), not stay live."""
    alice = user(testbed)
    name, _ = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        chan = client.get_transport().open_session()
        chan.invoke_subsystem("sftp")
        [live] = wait_for_sessions(testbed, alice.name, ended=False)
        chan.close()
        [ended] = wait_for_sessions(testbed, alice.name)
    finally:
        client.close()
    assert ended["id"] == live["id"] and ended["end_reason"] == "client closed"
    ends = wait_for_audit(testbed, "session.end", alice.name)
    assert [e["session_id"] for e in ends] == [live["id"]]


def test_a_datasets_session_that_cannot_be_recorded_serves_nothing(testbed, tmp_path):
    from tests.support.gateway import GatewayProcess

    alice = user(testbed)
    name, files = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    before = catalog_counts(testbed)
    gateway = GatewayProcess(testbed.data_dir, env={"BASTION_RECORDING_DIR": str(blocker)}).start()
    try:
        result = sftp(gateway.port, alice, f"{alice.name}#datasets", f'get "/{name}/data.csv" "{tmp_path}/got"\n')
    finally:
        gateway.stop()
    assert result.returncode != 0 and not (tmp_path / "got").exists()
    assert catalog_counts(testbed) == before                      # nothing counted
    [session] = wait_for_sessions(testbed, alice.name)
    assert (session["target"], session["end_reason"]) == ("datasets", "recording unavailable")
    assert wait_for_audit(testbed, "dataset.download", alice.name, timeout=1) == []


async def _scalar(session, query):
    return (await session.execute(query)).scalar_one()


# --- the SFTP column of the matrix: grant mode x state -----------------------------------------------------

MODES = ("view", "download", "approval-missing", "approval-given")
STATES = ("published", "unpublished", "publish-window-expired", "grant-expired", "revoked", "over-daily-quota",
          "downloads-used-up", "below-level")
_baseline: dict[str, tuple[str, str]] = {}


def _past() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)


def _apply_state(testbed, state: str, name: str, login: Login, grant_id: int) -> None:
    if state == "unpublished":
        run_catalog(testbed, "unpublish", name)
    elif state == "publish-window-expired":
        # publish refuses an end in the past, so the window runs out here instead
        db(testbed, lambda s: s.execute(update(Dataset).where(Dataset.name == name).values(publish_until=_past())))
    elif state == "grant-expired":
        db(testbed, lambda s: s.execute(update(DatasetGrant).where(DatasetGrant.id == grant_id)
                                        .values(valid_until=_past())))
    elif state == "revoked":
        run_catalog(testbed, "revoke", grant_id)
    elif state == "over-daily-quota":
        limit = testbed.directory.services.config["publish.bytes_per_day"]
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")

        async def spend(session):
            user_id = (await session.execute(select(User.id).where(User.name == login.name))).scalar_one()
            session.add(DailyUsage(user_id=user_id, day=day, rows_viewed=0, bytes_downloaded=limit))
        db(testbed, spend)
    elif state == "downloads-used-up":
        db(testbed, lambda s: s.execute(update(DatasetGrant).where(
            DatasetGrant.id == grant_id, DatasetGrant.max_downloads.is_not(None)).values(downloads=1)))


def _baseline_errors(testbed, login: Login, tmp_path: Path) -> tuple[str, str]:
    """What the client prints for a dataset name that never existed (get, then ls)."""
    if testbed.backend not in _baseline:
        got = get(testbed, login, f"{NEVER}/data.csv", tmp_path / "never.csv")
        listed = sftp(testbed.port, login, f"{login.name}#datasets", f"ls -l {NEVER}\n")
        assert got.returncode != 0 and listed.returncode != 0
        _baseline[testbed.backend] = (shape(got.stderr, NEVER), shape(listed.stderr, NEVER))
    return _baseline[testbed.backend]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("mode", MODES)
def test_matrix_cell(testbed, tmp_path, mode, state):
    login = user(testbed, prefix="m")
    content = f"id,value\n1,{mode}\n2,{state}\n".encode()
    name, _ = dataset(testbed, tmp_path, content, classification="confidential" if state == "below-level"
                      else "internal")
    grant_mode = {"view": "view", "download": "download"}.get(mode, "download-with-approval")
    extra = {"max_downloads": 1} if state == "downloads-used-up" and mode != "view" else {}
    grant_id = grant(testbed, name, login, grant_mode, **extra)
    if mode == "approval-given":
        request = run_catalog(testbed, "request_download", login.name, name)
        run_catalog(testbed, "decide", request["id"], True, "ok for the test")
    _apply_state(testbed, state, name, login, grant_id)
    allowed = mode in ("download", "approval-given") and state == "published"

    assert (name in ls_root(testbed, login)) is allowed
    local = tmp_path / "got.csv"
    listed = sftp(testbed.port, login, f"{login.name}#datasets", f"ls -l {name}\n")
    got = get(testbed, login, f"/{name}/data.csv", local)
    if allowed:
        assert listed.returncode == 0 and b"data.csv" in listed.stdout
        assert got.returncode == 0, got.stderr
        assert local.read_bytes() == content
        if mode == "approval-given":  # the approval was for one download
            assert name not in ls_root(testbed, login)
    else:
        assert got.returncode != 0 and not local.exists()
        assert listed.returncode != 0
        never_get, never_ls = _baseline_errors(testbed, login, tmp_path)
        assert shape(got.stderr, name) == never_get
        assert shape(listed.stderr, name) == never_ls


# --- read only ---------------------------------------------------------------------------------------------


def test_every_write_is_refused_and_nothing_changes(testbed, tmp_path):
    import paramiko
    from paramiko import sftp as proto

    alice = user(testbed)
    name, _ = dataset(testbed, tmp_path, files={"dir/a.csv": b"x,y\n1,2\n", "b.csv": b"k\n1\n"})
    grant(testbed, name, alice, "download")
    local = tmp_path / "upload.csv"
    local.write_bytes(b"a,b\n1,2\n")
    before, blobs = catalog_counts(testbed), blob_listing(testbed)
    spec = f"{alice.name}#datasets"
    for command in (f"put {local} /{name}/new.csv", f"put {local} /{name}/b.csv", f"put {local} /new.csv",
                    f"rm /{name}/b.csv", f"rename /{name}/b.csv /{name}/c.csv", f"mkdir /{name}/d", "mkdir /x",
                    f"rmdir /{name}/dir", f"rmdir /{name}", f"chmod 777 /{name}/b.csv", f"chown 1 /{name}/b.csv",
                    f"chgrp 1 /{name}/b.csv", f"symlink /{name}/b.csv /{name}/l", f"ln /{name}/b.csv /{name}/h",
                    f"ln -s /etc/passwd /{name}/p", f"df /{name}", f"put {local} /{NEVER}/x"):
        result = sftp(testbed.port, alice, spec, command + "\n")
        assert result.returncode != 0, command
        assert b"not found" not in result.stderr or NEVER in command or "new.csv" in command, (command, result.stderr)

    client = paramiko_client(testbed.port, alice, spec)
    try:
        session = client.open_sftp()
        for mode in ("w", "a", "r+", "w+", "x"):
            with pytest.raises(PermissionError):
                session.open(f"/{name}/b.csv", mode)
        with pytest.raises(PermissionError):
            session.truncate(f"/{name}/b.csv", 0)
        with pytest.raises(PermissionError):
            session.utime(f"/{name}/b.csv", (0, 0))
        with pytest.raises(PermissionError):
            session.posix_rename(f"/{name}/b.csv", f"/{name}/z.csv")
        with pytest.raises(PermissionError):
            session.symlink("/etc/passwd", f"/{name}/p")
        for extension, args in (("hardlink@openssh.com", (f"/{name}/b.csv", f"/{name}/h")),
                                ("lsetstat@openssh.com", (f"/{name}/b.csv", paramiko.SFTPAttributes())),
                                ("statvfs@openssh.com", (f"/{name}",))):
            with pytest.raises(IOError):
                session._request(proto.CMD_EXTENDED, extension, *args)
        assert catalog_counts(testbed) == before  # not even a download was counted so far
        # Two read handles (one counted download: two files of one copy): no write through them, not even by
        # copy-data.
        source, dest = session.open(f"/{name}/b.csv", "r"), session.open(f"/{name}/dir/a.csv", "r")
        with pytest.raises(PermissionError):
            dest.chmod(0o777)  # fsetstat
        with pytest.raises(PermissionError):
            session._request(proto.CMD_WRITE, dest.handle, proto.int64(0), b"nope")
        with pytest.raises(PermissionError):
            session._request(proto.CMD_EXTENDED, "copy-data", source.handle, proto.int64(0), proto.int64(0),
                             dest.handle, proto.int64(0))
        assert source.read() == b"k\n1\n" and dest.read() == b"x,y\n1,2\n"  # still served, still the same
        source.close()
        dest.close()
    finally:
        client.close()
    after = catalog_counts(testbed)
    assert after[:4] == before[:4]
    assert [(g, n + 1) for g, n in before[4] if g == after[4][-1][0]] == [after[4][-1]]
    assert after[4][:-1] == before[4][:-1]
    assert blob_listing(testbed) == blobs
    denied = wait_for_audit(testbed, "transfer.denied", alice.name, until=lambda ev: len(ev) >= 10)
    assert {"remove", "rename", "mkdir", "rmdir", "setstat", "symlink", "hardlink", "open for writing"} <= \
        {e["details"]["operation"] for e in denied}


# --- no path leaves the granted set (hypothesis, one paramiko connection) ------------------------------------

_SEGMENTS = ["..", ".", "", "...", "~", "etc", "passwd", "root", "tmp", "proc", "self", "data.csv", "dir", "a.csv",
             "%2e%2e", "%2E%2E%2F", "..%2f..", "%2f", "..\\..", "\\", "．．", "\u2024\u2024", "\u2025", "..\u200b",
             "\u202e..", "ｅｔｃ", "%00", "..;", "*", "?", "[a]", "datasets", "blobs", "gateway.log", "bastion.toml",
             "é", "e\u0301", "\U0001f600", "\ufeff", "\u3000"]


def test_no_path_reaches_anything_outside_the_granted_set(testbed, tmp_path):
    import errno as errno_mod
    from hypothesis import HealthCheck, given, settings, strategies as st

    alice, bob = user(testbed), user(testbed)
    granted_files = {"data.csv": b"id\n1\n", "dir/a.csv": b"a\n2\n"}
    visible, _ = dataset(testbed, tmp_path, files=granted_files)
    view_only, _ = dataset(testbed, tmp_path, files={"data.csv": b"id\nview-only\n", "dir/a.csv": b"a\nv\n"})
    others, _ = dataset(testbed, tmp_path, files={"data.csv": b"id\nbobs\n", "dir/a.csv": b"a\nb\n"})
    grant(testbed, visible, alice, "download")
    grant(testbed, view_only, alice, "view")
    grant(testbed, others, bob, "download")
    dirs = {"/", f"/{visible}", f"/{visible}/dir"}
    files = {f"/{visible}/{path}": data for path, data in granted_files.items()}
    names = {"/": {visible}, f"/{visible}": {"data.csv", "dir"}, f"/{visible}/dir": {"a.csv"}}
    segments = _SEGMENTS + [visible, view_only, others, visible.upper(), visible + "x", visible + "/"]
    segment = st.one_of(st.sampled_from(segments),
                        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
                                max_size=12))
    paths = st.builds(lambda lead, parts: lead + "/".join(parts),
                      st.sampled_from(["", "/", "//", "/./", "../", "/../../"]), st.lists(segment, max_size=6))
    near = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "//", "/../"]),
                     st.lists(st.sampled_from([visible, "data.csv", "dir", "a.csv", "..", ".", ""]), max_size=5))
    known = st.builds(lambda lead, tail: f"{lead}{visible}/{tail}", st.sampled_from(["", "/", "//", "/../", "./"]),
                      st.sampled_from(["data.csv", "dir/a.csv", "./data.csv", "dir/../data.csv", "dir//a.csv",
                                       f"../{visible}/data.csv", "dir/./a.csv/", "data.csv/."]))
    raw = st.binary(max_size=40).filter(lambda b: b"\x00" not in b)

    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    session = client.open_sftp()
    seen: dict[str, int] = {"dir": 0, "file": 0, "refused": 0}

    def refused(call) -> None:
        with pytest.raises(IOError) as caught:
            call()
        assert caught.value.errno == errno_mod.ENOENT and "No such file" in str(caught.value), caught.value

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(path=st.one_of(known, near, paths, raw))
    def check(path):
        try:
            where = session.normalize(path)
        except IOError:
            refused(lambda: session.stat(path))
            return
        # realpath is lexical and stays under the root; what exists is decided by stat/open only
        assert where.startswith("/") and "/../" not in where + "/" and "//" not in where
        kind = "dir" if where in dirs else "file" if where in files else "refused"
        seen[kind] += 1
        if where in dirs:
            assert statmod.S_ISDIR(session.stat(path).st_mode)
            assert set(session.listdir(path)) == names[where]
        elif where in files:
            assert session.stat(path).st_size == len(files[where])
            with session.open(path, "r") as handle:
                assert handle.read() == files[where]
        else:
            refused(lambda: session.stat(path))
            refused(lambda: session.lstat(path))
            refused(lambda: session.open(path, "r"))
            refused(lambda: session.listdir(path))
        refused(lambda: session.readlink(path))

    try:
        check()
        assert min(seen.values()) >= 5, seen  # the examples reached granted things as well as refused ones
        # symlinks cannot be made, so none can lead out; and the gateway's own files stay out of reach
        for path in ("/etc/passwd", "../../../../etc/passwd", str(testbed.data_dir / "bastion.toml"),
                     str(testbed.data_dir / "blobs"), f"/{others}/data.csv", f"/{view_only}/data.csv"):
            refused(lambda: session.stat(path))
            refused(lambda: session.open(path, "r"))
        with pytest.raises(PermissionError):
            session.symlink("/etc/passwd", f"/{visible}/passwd")
        refused(lambda: session.stat(f"/{visible}/passwd"))
    finally:
        client.close()


# --- the login: forms, refusals, reserved name ---------------------------------------------------------------


def test_login_forms_reach_the_same_view(testbed, tmp_path):
    alice = user(testbed)
    name, files = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    assert ls_root(testbed, alice, f"{alice.name}#datasets") == [name]
    assert ls_root(testbed, alice, f"{alice.name}@datasets") == [name]
    # the colon form works where the client does not split at the colon: as an explicit User
    args = ["sftp", "-P", str(testbed.port), *COMMON, *alice.options(), "-o", f"User={alice.name}:datasets",
            "-b", "-", "127.0.0.1"]
    result = subprocess.run(args, input=b"ls -1 /\n", capture_output=True, timeout=60, env=alice.env())
    assert result.returncode == 0 and name in result.stdout.decode(), result.stderr
    # modern scp speaks SFTP, so it downloads too ('@' form: scp refuses '#' in a download source)
    local = tmp_path / "scp.csv"
    result = scp(testbed.port, alice, f"{alice.name}@datasets@127.0.0.1:/{name}/data.csv", str(local))
    assert result.returncode == 0, result.stderr
    assert local.read_bytes() == files["data.csv"]


def test_bad_login_forms_are_refused_like_unknown_users(testbed, tmp_path):
    alice = user(testbed)
    name, _ = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    for spec in (f"{alice.name}#datasets#root", f"{alice.name}#Datasets", f"{alice.name}#datasets@x",
                 f"{alice.name}##datasets", f"{alice.name}#datasets/", "#datasets", f"{alice.name}#datasets#",
                 f"nobody{alice.name}#datasets"):
        result = sftp(testbed.port, alice, spec, "ls /\n")
        assert result.returncode != 0, spec
        assert b"ermission denied" in result.stderr, (spec, result.stderr)


def test_shell_exec_legacy_scp_and_forwarding_refused_with_a_clear_message(testbed, tmp_path):
    alice = user(testbed)
    name, _ = dataset(testbed, tmp_path)
    grant(testbed, name, alice, "download")
    spec = f"{alice.name}#datasets"
    for command in ((), ("id",), ("cat", f"/{name}/data.csv")):
        result = ssh(testbed.port, alice, spec, *command, tty=not command)
        assert result.returncode != 0
        assert b"this login serves only SFTP downloads of published datasets" in result.stdout + result.stderr
        assert b"uid=" not in result.stdout and b"id,amount" not in result.stdout
    legacy = scp(testbed.port, alice, f"{alice.name}@datasets@127.0.0.1:/{name}/data.csv", str(tmp_path / "x"),
                 legacy=True)
    assert legacy.returncode != 0 and not (tmp_path / "x").exists()
    forward = ssh(testbed.port, alice, spec, extra=["-o", "LogLevel=INFO", "-W", f"127.0.0.1:{testbed.sshd.port}"])
    assert forward.returncode != 0 and not forward.stdout.startswith(b"SSH-")
    assert b"administratively prohibited: bastion: this login serves only SFTP" in forward.stderr, forward.stderr
    denied = wait_for_audit(testbed, "forward.denied", alice.name)
    assert denied and denied[0]["target"] == "datasets"
    sessions = wait_for_audit(testbed, "session.denied", alice.name, until=lambda ev: len(ev) >= 4)
    assert {e["details"]["kind"] for e in sessions} == {"shell", "exec"} and len(sessions) >= 4


def test_a_target_named_datasets_cannot_be_created(testbed):
    from bastion.errors import UsageError

    for name in ("datasets", "Datasets"):
        with pytest.raises(UsageError, match="reserved"):
            testbed.admin().add_target(name, testbed.sshd.host, testbed.sshd.port,
                                       testbed.sshd.host_key_pub.read_text())
    result = subprocess.run([sys.executable, "-m", "bastion", "target", "add", "datasets", "--host", "127.0.0.1",
                             "--port", str(testbed.sshd.port), "--host-key", str(testbed.sshd.host_key_pub)],
                            capture_output=True, timeout=60,
                            env={**os.environ, "BASTION_DATA_DIR": str(testbed.data_dir)})
    assert result.returncode != 0 and b"reserved" in result.stderr, result.stderr
    targets = [t["name"] for t in testbed.admin().list_targets()]
    assert "datasets" not in targets and "Datasets" not in targets


# --- garbage ---------------------------------------------------------------------------------------------------


def test_junk_handles_huge_reads_offsets_past_the_end_and_junk_packets(testbed, tmp_path):
    from paramiko import sftp as proto

    alice = user(testbed)
    content = os.urandom(300_000)
    name, _ = dataset(testbed, tmp_path, files={"data.bin": content})
    grant(testbed, name, alice, "download")
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        session = client.open_sftp()
        for command, args in ((proto.CMD_READ, (b"junk", proto.int64(0), 10)), (proto.CMD_CLOSE, (b"junk",)),
                              (proto.CMD_FSTAT, (b"\x00\x00\x00\x07",)), (proto.CMD_READDIR, (b"",)),
                              (proto.CMD_WRITE, (b"junk", proto.int64(0), b"x")),
                              (proto.CMD_EXTENDED, ("no-such-extension@example.com",)),
                              (proto.CMD_EXTENDED, ("fsync@openssh.com", b"junk"))):
            with pytest.raises(IOError):
                session._request(command, *args)
        handle = session.open(f"/{name}/data.bin", "r")
        # a read far longer than the protocol allows is served in bounded pieces, never all at once
        kind, message = session._request(proto.CMD_READ, handle.handle, proto.int64(0), 0xFFFFFFFF)
        piece = message.get_string()
        assert 0 < len(piece) <= 1 << 20 and piece == content[:len(piece)]
        for offset in (len(content), len(content) + 1, (1 << 63) - 1, (1 << 64) - 1):
            with pytest.raises(EOFError):
                session._request(proto.CMD_READ, handle.handle, proto.int64(offset), 4096)
        kind, message = session._request(proto.CMD_READ, handle.handle, proto.int64(len(content) - 5), 4096)
        assert message.get_string() == content[-5:]
        # asyncssh's sparse-ranges extension asks the open file itself: one range, all data, and nothing past it
        kind, message = session._request(proto.CMD_EXTENDED, "ranges@asyncssh.com", handle.handle, proto.int64(0),
                                         proto.int64(1 << 40))
        assert kind == proto.CMD_EXTENDED_REPLY and message.get_int() == 1
        assert (message.get_int64(), message.get_int64()) == (0, len(content))
        with pytest.raises(EOFError):
            session._request(proto.CMD_EXTENDED, "ranges@asyncssh.com", handle.handle, proto.int64(len(content)),
                             proto.int64(10))
        handle.close()
        with pytest.raises(IOError):  # closed: the handle is gone
            session._request(proto.CMD_READ, handle.handle, proto.int64(0), 10)
        for path in (b"/\x00", f"/{name}\x00/data.bin".encode(), f"/{name}/data.bin\x00".encode(), b"\xff/\x1b"):
            for call in (session.stat, lambda p: session.open(p, "r"), session.listdir):
                with pytest.raises(FileNotFoundError, match="No such file"):
                    call(path)
        assert session.listdir("/") == [name]  # the session survived all of it
    finally:
        client.close()
    # junk inside the SFTP channel ends that channel only; the gateway serves the next client
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        channel = client.get_transport().open_session(timeout=20)
        channel.invoke_subsystem("sftp")
        channel.sendall(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03" + os.urandom(64) + b"\xff\xff\xff\xff" * 4)
        channel.settimeout(20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not channel.closed and channel.recv(65536):
            pass
    finally:
        client.close()
    assert ls_root(testbed, alice) == [name]
    downloads = wait_for_audit(testbed, "dataset.download", alice.name)
    assert len(downloads) == 1 and downloads[0]["details"]["sha256"] == hashlib.sha256(content).hexdigest()


# --- the level the login demands -------------------------------------------------------------------------------


def test_login_demands_the_level_of_download_granted_datasets_the_user_can_reach(testbed, tmp_path):
    plain, _ = dataset(testbed, tmp_path)
    confidential, _ = dataset(testbed, tmp_path, classification="confidential")  # level 2
    # without a second factor enrolled, level 2 is out of reach: the login stays at level 1, without it
    keyonly = user(testbed)
    for name in (plain, confidential):
        grant(testbed, name, keyonly, "download")
    assert ls_root(testbed, keyonly) == [plain]
    # with TOTP enrolled, the login asks for it (partial success), and then lists both
    withtotp = testbed.user(None, key=True, totp=True, prefix="t")
    for name in (plain, confidential):
        grant(testbed, name, withtotp, "download")
    # sftp without -b (batch mode would forbid the prompt); askpass answers the TOTP prompt
    args = ["sftp", "-P", str(testbed.port), "-o", "LogLevel=INFO", *COMMON, *withtotp.options(),
            f"{withtotp.name}#datasets@127.0.0.1"]
    local = tmp_path / "confidential.csv"
    result = subprocess.run(args, input=f"ls -1 /\nget /{confidential}/data.csv {local}\n".encode(),
                            capture_output=True, timeout=60, env=withtotp.env(), start_new_session=True)
    assert result.returncode == 0, result.stderr
    assert b"bastion: datasets needs authentication level 2" in result.stderr  # after the key: partial success
    listed = {line.strip().lstrip("/") for line in result.stdout.decode().splitlines()}
    assert {plain, confidential} <= listed
    assert local.read_bytes().startswith(b"id,amount")
    success = wait_for_audit(testbed, "auth.success", withtotp.name)
    assert success and success[0]["details"]["level"] == 2 and success[0]["target"] == "datasets"


# --- 1 GiB through the real sftp client: the gateway's memory stays bounded ------------------------------------

GIB = 1 << 30
MEMORY_BOUND = 200 << 20


@pytest.mark.timeout(900)
def test_one_gib_download_keeps_gateway_memory_bounded(testbed, tmp_path):
    if testbed.backend != "sqlite":
        pytest.skip("the memory bound does not depend on the database: measured once, on SQLite")
    from tests.support.memory import RssSampler, file_sha256, timed, write_big_file

    alice = user(testbed)
    source = tmp_path / "big.bin"
    digest = write_big_file(source, GIB)
    name = f"big{next(_names)}{testbed.backend[:2]}"
    run_catalog(testbed, "add", name, str(source), classification="internal")  # streamed into the blob store
    source.unlink()
    run_catalog(testbed, "publish", name)
    grant(testbed, name, alice, "download")
    local = tmp_path / "got.bin"
    pid = testbed.gateway.process.pid
    try:
        with RssSampler(pid) as rss:
            result, seconds = timed(sftp, testbed.port, alice, f"{alice.name}#datasets",
                                    f"get /{name}/big.bin {local}\n", timeout=800)
        assert result.returncode == 0, result.stderr
        assert local.stat().st_size == GIB and file_sha256(local) == digest
    finally:
        local.unlink(missing_ok=True)
    print(f"\n1 GiB via sftp: {seconds:.1f} s ({GIB / seconds / (1 << 20):.0f} MiB/s); gateway RSS "
          f"{rss.baseline / (1 << 20):.0f} MiB before, peak {rss.peak / (1 << 20):.0f} MiB, "
          f"growth {rss.growth / (1 << 20):.1f} MiB over {rss.samples} samples")
    assert rss.samples > 10
    assert rss.growth < MEMORY_BOUND
    event = wait_for_audit(testbed, "dataset.download", alice.name)[0]["details"]
    assert (event["size"], event["sha256"]) == (GIB, digest)


def test_device_policy_applies_to_the_datasets_login(testbed, tmp_path):
    name, _ = dataset(testbed, tmp_path)
    strict, lenient = user(testbed), user(testbed)
    for login, policy in ((strict, "required"), (lenient, "advisory")):
        grant(testbed, name, login, "download")
        testbed.admin().set_user_policy(login.name, policy)
    refused = subprocess.run(["sftp", "-P", str(testbed.port), "-o", "LogLevel=INFO", *COMMON, *strict.options(),
                              "-b", "-", f"{strict.name}#datasets@127.0.0.1"], input=b"ls /\n",
                             capture_output=True, timeout=60, env=strict.env(), start_new_session=True)
    assert refused.returncode != 0 and b"bound device" in refused.stderr, refused.stderr
    assert ls_root(testbed, lenient) == [name]
    assert wait_for_audit(testbed, "device.advisory", lenient.name)[0]["target"] == "datasets"
    assert not wait_for_audit(testbed, "session.start", strict.name, timeout=1)


def test_damaged_storage_fails_plainly_without_naming_blobs(testbed, tmp_path):
    alice = user(testbed)
    name, files = dataset(testbed, tmp_path, b"id,secret\n" + b"1,abc\n" * 2000)
    grant(testbed, name, alice, max_downloads=100)
    sha = run_catalog(testbed, "show", name)["files"][0]["sha256"]
    blob = testbed.data_dir / "blobs" / sha[:2] / sha
    original = blob.read_bytes()

    def fetch_with_paramiko() -> str:
        """The server's own failure text (paramiko shows it; OpenSSH's sftp prints only "Failure")."""
        client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
        try:
            client.open_sftp().get(f"/{name}/data.csv", str(tmp_path / "got.csv"))
        except OSError as exc:
            return str(exc)
        finally:
            client.close()
        raise AssertionError("a damaged file was served")

    try:
        flipped = bytearray(original)
        flipped[100] ^= 1  # inside chunk 0: opens fine, fails authentication when read
        blob.write_bytes(bytes(flipped))
        result = get(testbed, alice, f"/{name}/data.csv", tmp_path / "flipped.csv")
        assert result.returncode != 0 and b"Failure" in result.stderr and sha[:12].encode() not in result.stderr
        message = fetch_with_paramiko()
        assert "cannot be read" in message and "blob" not in message.lower() and sha[:12] not in message
        blob.write_bytes(original[:-5])  # truncated: refused when opened, before the download is counted
        before = catalog_counts(testbed)
        message = fetch_with_paramiko()
        assert "cannot be read" in message and "blob" not in message.lower()
        assert catalog_counts(testbed) == before
    finally:
        blob.write_bytes(original)
