"""The catalog: files and folders in, versions, dedupe, publish windows, grants, approvals; every bad input is
a clear error that changes nothing (rows, blob files, audit)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os

import pytest
from sqlalchemy import select

from bastion.errors import Conflict, NotFound, UsageError
from bastion.publish.catalog import Catalog
from bastion.publish.errors import InputError
from bastion.store.models import Blob, DatasetFile, DownloadRequest

from .conftest import audit_events, audit_types, blob_files, counts

CSV = b"id,city\n1,Beijing\n2,Shanghai\n"


@pytest.fixture
def src(tmp_path):
    def make(name="data.csv", content=CSV):
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    return make


async def unchanged(services, work, error, fragment=""):
    """Run `work`; it must raise `error` whose message holds `fragment`, and change nothing at all."""
    before, files = await counts(services.db), blob_files(services)
    with pytest.raises(error) as caught:
        await work
    assert fragment in caught.value.safe_message, caught.value.safe_message
    assert await counts(services.db) == before
    assert blob_files(services) == files
    return caught.value


# --- adding files and folders -----------------------------------------------------------------------------


async def test_add_a_file(catalog, services, src):
    result = await catalog.add("q3", src(), classification="confidential", description="Q3 figures")
    assert result["version"] == 1 and result["classification"] == "confidential"
    assert result["files"] == [{"path": "data.csv", "size": len(CSV), "sha256": hashlib.sha256(CSV).hexdigest()}]
    shown = await catalog.show("q3")
    assert shown["state"] == "unpublished" and shown["files"][0]["viewer"] == "table"
    assert shown["versions"] == [{"version": 1, "files": 1, "size": len(CSV), "created_at": shown["created_at"],
                                  "created_by": "tester"}]
    listed = await catalog.list()
    assert [(d["name"], d["state"], d["files"], d["size"]) for d in listed] == [("q3", "unpublished", 1, len(CSV))]
    [event] = await audit_events(services.db, "admin.dataset.add")
    assert event.actor == "tester" and event.details["before"] is None
    assert event.details["after"]["classification"] == "confidential" and event.details["after"]["version"] == 1
    # Encrypted at rest: the plaintext is nowhere in the blob directory.
    assert len(blob_files(services)) == 1
    stored = (services.config.data_dir / "blobs" / blob_files(services)[0]).read_bytes()
    assert b"Beijing" not in stored


async def test_add_a_nested_folder_with_links_inside(catalog, src, tmp_path):
    root = tmp_path / "folder"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.csv").write_bytes(CSV)
    (root / "sub" / "deeper" / "c.json").write_bytes(b'{"x": 1}')
    os.symlink(root / "a.txt", root / "sub" / "link-to-a.txt")
    os.symlink("../a.txt", root / "sub" / "relative-link.txt")
    result = await catalog.add("folder", root)
    assert sorted(f["path"] for f in result["files"]) == ["a.txt", "sub/b.csv", "sub/deeper/c.json", "sub/link-to-a.txt",
                                                   "sub/relative-link.txt"]
    shown = await catalog.show("folder")
    assert {f["path"]: f["viewer"] for f in shown["files"]}["sub/deeper/c.json"] == "text"


FOLDER_CASES = [
    ("link_outside", "links outside the folder"),
    ("link_to_folder", "link to a folder"),
    ("fifo", "not a regular file"),
    ("empty_file", "is empty"),
    ("empty_folder", "holds no files"),
    ("bad_csv", "malformed CSV"),
    ("control_name", "control or invisible"),
    ("dangling", "not a file"),
]
FILE_CASES = [("missing", "no such file"), ("fifo", "not a regular file"), ("empty", "is empty"),
              ("bad_csv", "malformed CSV"), ("utf16_csv", "UTF-16"), ("large", "publish.max_file_bytes")]


async def test_bad_folders_and_files_are_refused_and_change_nothing(make_services, tmp_path):
    services = make_services(publish__max_file_bytes=30_000)
    catalog = Catalog.from_services(services, actor="tester")
    await catalog.add("existing", _one_file(tmp_path))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret\n")
    for build, fragment in FOLDER_CASES:
        root = tmp_path / f"folder-{build}"
        root.mkdir()
        if build != "empty_folder":
            (root / "ok.txt").write_bytes(b"fine\n")
        if build == "link_outside":
            os.symlink(outside, root / "evil.txt")
        elif build == "link_to_folder":
            (tmp_path / "other").mkdir()
            (tmp_path / "other" / "x.txt").write_bytes(b"x")
            os.symlink(tmp_path / "other", root / "dir-link")
        elif build == "fifo":
            os.mkfifo(root / "pipe")
        elif build == "empty_file":
            (root / "zero.csv").write_bytes(b"")
        elif build == "bad_csv":
            (root / "bad.csv").write_bytes(b"a,b\n1,2,3\n")
        elif build == "control_name":
            (root / "bad\x1bname.txt").write_bytes(b"x")
        elif build == "dangling":
            os.symlink(root / "nowhere", root / "dangling.txt")
        await unchanged(services, catalog.add("folder", root), InputError, fragment)
        await unchanged(services, catalog.update("existing", root), InputError, fragment)
    for build, fragment in FILE_CASES:
        path = tmp_path / f"input-{build}.csv"
        if build == "fifo":
            os.mkfifo(path)
        elif build == "empty":
            path.write_bytes(b"")
        elif build == "bad_csv":
            path.write_bytes(b'a,b\n"1,2\n')
        elif build == "utf16_csv":
            path.write_bytes("a,b\n1,2\n".encode("utf-16"))
        elif build == "large":
            path.write_bytes(b"a\n" + b"1\n" * 20_000)
        await unchanged(services, catalog.add("ds", path), InputError, fragment)
        await unchanged(services, catalog.update("existing", path), InputError, fragment)
    assert (await catalog.show("existing"))["version"] == 1


def _one_file(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(b"one\n")
    return path


# --- names and fields -------------------------------------------------------------------------------------


GARBAGE_NAMES = ["", " ", "-lead", ".hidden", "a/b", "a\\b", "..", "a b", "名字", "café", "x" * 64, "tab\there",
                 "new\nline", "nul\0", "ａｂｃ", "a\u202eb", "١٢٣", None, 42]


async def test_garbage_dataset_names_are_refused_and_change_nothing(catalog, services, src, users):
    await catalog.add("real", src())
    for name in GARBAGE_NAMES:
        for call in (catalog.add(name, src()), catalog.publish(name), catalog.unpublish(name),
                     catalog.grant(name, user="alice"), catalog.show(name), catalog.update(name, src()),
                     catalog.add_upload(name, "f.txt", Body(b"x\n"), size=2)):
            error = await unchanged(services, call, UsageError, "invalid dataset name")
            assert "\n" not in error.safe_message and "\0" not in error.safe_message


async def test_the_longest_name_works(catalog, src):
    assert (await catalog.add("n" * 63, src()))["name"] == "n" * 63


async def test_bad_fields_are_refused(catalog, services, src):
    for kwargs, fragment in [
        ({"classification": "top-secret"}, "classification must be one of"),
        ({"description": "x" * 5000}, "longer than 4000"),
        ({"description": "bell\x07"}, "control characters"),
        ({"description": 42}, "must be text"),
    ]:
        await unchanged(services, catalog.add("ds", src(), **kwargs), UsageError, fragment)


async def test_an_unknown_owner_or_a_taken_name_changes_nothing(catalog, services, src, users):
    await unchanged(services, catalog.add("ds", src(), owner="nobody"), NotFound, "no such user")
    await unchanged(services, catalog.add("ds", src(), owner="a" * 65), NotFound, "no such user")
    await catalog.add("ds", src(), owner="bob")
    await unchanged(services, catalog.add("ds", src("other.txt", b"other\n")), Conflict, "already exists")


# --- versions and dedupe ----------------------------------------------------------------------------------


async def test_update_adds_a_version_and_keeps_the_old_blobs(catalog, services, src):
    await catalog.add("ds", src())
    first = blob_files(services)
    result = await catalog.update("ds", src("data.csv", CSV + b"3,Shenzhen\n"))
    assert result["version"] == 2
    shown = await catalog.show("ds")
    assert shown["version"] == 2 and [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["files"][0]["size"] == len(CSV) + 11
    assert set(first) < set(blob_files(services)) and len(blob_files(services)) == 2
    async with services.db() as db:
        assert len((await db.execute(select(DatasetFile))).scalars().all()) == 2
    [event] = await audit_events(services.db, "admin.dataset.update")
    assert event.details["before"] == {"version": 1} and event.details["after"]["version"] == 2
    await unchanged(services, catalog.update("nosuch", src()), NotFound, "no such dataset")
    await unchanged(services, catalog.update("ds", src("bad.csv", b"a\n\"")), InputError, "malformed CSV")


async def test_identical_content_is_stored_once(catalog, services, src, tmp_path):
    await catalog.add("one", src())
    await catalog.add("two", src("copy.csv", CSV))
    folder = tmp_path / "same"
    folder.mkdir()
    (folder / "x.csv").write_bytes(CSV)
    (folder / "y.csv").write_bytes(CSV)
    await catalog.add("three", folder)
    await catalog.update("one", src())
    assert len(blob_files(services)) == 1
    async with services.db() as db:
        assert len((await db.execute(select(Blob))).scalars().all()) == 1
        assert len((await db.execute(select(DatasetFile))).scalars().all()) == 5


# --- uploads ----------------------------------------------------------------------------------------------


class Body:
    """An aiohttp-style body: read_chunk() per piece; may break off or run long."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.stream = io.BytesIO(data)
        self.fail_after = fail_after

    async def read_chunk(self, size: int = 65536) -> bytes:
        await asyncio.sleep(0)
        if self.fail_after is not None and self.stream.tell() >= self.fail_after:
            raise ConnectionResetError("peer went away")
        return self.stream.read(min(size, 1000))


async def test_upload_streams_into_a_dataset_and_a_new_version(catalog, services):
    result = await catalog.add_upload("up", "report.csv", Body(CSV * 50), size=len(CSV * 50))
    assert result["files"][0]["size"] == len(CSV) * 50
    again = await catalog.update_upload("up", "report.csv", Body(CSV), size=None)
    assert again["version"] == 2


UPLOAD_CASES = [("cut", "cut off after"), ("long", "longer than its declared size"),
                ("broken", "reading the input failed"), ("oversize_declared", "publish.max_file_bytes"),
                ("oversize_stream", "publish.max_file_bytes"), ("empty", "is empty"),
                ("slash", "must not contain '/'"), ("dotdot", "'..'"), ("control", "control or invisible"),
                ("bad_csv", "malformed CSV")]


async def test_bad_uploads_change_nothing(make_services, users):
    services = make_services(publish__max_file_bytes=30_000)
    catalog = Catalog.from_services(services, actor="tester")
    await catalog.add_upload("up", "v1.txt", Body(b"version one\n"), size=12)
    for case, fragment in UPLOAD_CASES:
        data, size, filename, fail_after = b"x" * 20_000, 20_000, "file.txt", None
        if case == "cut":
            size = 25_000
        elif case == "long":
            size = 10_000
        elif case == "broken":
            fail_after = 5_000
        elif case == "oversize_declared":
            size = 40_000
        elif case == "oversize_stream":
            data, size = b"x" * 40_000, None
        elif case == "empty":
            data, size = b"", None
        elif case == "slash":
            filename = "dir/file.txt"
        elif case == "dotdot":
            filename = ".."
        elif case == "control":
            filename = "a\rb.txt"
        elif case == "bad_csv":
            data, size, filename = b"a,b\n1\n", None, "t.csv"
        for work in (catalog.add_upload("new", filename, Body(data, fail_after), size=size),
                     catalog.update_upload("up", filename, Body(data, fail_after), size=size)):
            await unchanged(services, work, InputError, fragment)
        assert (await catalog.show("up"))["version"] == 1
        assert [d["name"] for d in await catalog.list()] == ["up"]
        assert list((services.config.data_dir / "blobs" / "tmp").iterdir()) == []


async def test_an_upload_cancelled_midway_leaves_nothing(catalog, services):
    class Slow(Body):
        async def read_chunk(self, size=65536):
            await asyncio.sleep(0.01)
            return self.stream.read(500)

    before, files = await counts(services.db), blob_files(services)
    task = asyncio.create_task(catalog.add_upload("slow", "s.txt", Slow(b"y" * 100_000), size=100_000))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await counts(services.db) == before and blob_files(services) == files


# --- publishing -------------------------------------------------------------------------------------------


async def test_publish_windows(catalog, services, src):
    await catalog.add("ds", src())
    now = services.clock.now()
    result = await catalog.publish("ds", from_=(now + dt.timedelta(hours=1)).isoformat(), until="2026-12-01T00:00")
    assert result["until"] == "2026-12-01T00:00:00+00:00"  # no zone given: UTC
    assert (await catalog.show("ds"))["state"] == "scheduled"
    services.clock.advance(3600)
    assert (await catalog.show("ds"))["state"] == "published"
    services.clock.advance(3 * 86400)
    assert (await catalog.show("ds"))["state"] == "expired"
    [*_, event] = await audit_events(services.db, "admin.dataset.publish")
    assert event.details["before"]["published"] is False and event.details["after"]["until"].startswith("2026-12-01")
    await catalog.unpublish("ds")
    assert (await catalog.show("ds"))["state"] == "unpublished"
    await unchanged(services, catalog.unpublish("ds"), Conflict, "not published")


async def test_bad_publish_windows_and_unknown_datasets_change_nothing(catalog, services, src):
    await catalog.add("ds", src())
    for kwargs, fragment in [
        ({"until": "2026-11-28T11:00:00Z"}, "--until lies in the past"),
        ({"until": "2026-11-28T12:00:00Z"}, "--until lies in the past"),    # exactly now
        ({"until": "yesterday"}, "--until: not an ISO 8601 time"),
        ({"from_": "soon"}, "--from: not an ISO 8601 time"),
        ({"from_": "2026-12-02", "until": "2026-12-01"}, "--from must be before --until"),
        ({"from_": "2026-13-01"}, "--from"),
    ]:
        await unchanged(services, catalog.publish("ds", **kwargs), UsageError, fragment)
    assert (await catalog.show("ds"))["state"] == "unpublished"
    await unchanged(services, catalog.publish("nosuch"), NotFound, "no such dataset")
    await unchanged(services, catalog.unpublish("nosuch"), NotFound, "no such dataset")
    await unchanged(services, catalog.show("nosuch"), NotFound, "no such dataset")


# --- grants -----------------------------------------------------------------------------------------------


@pytest.fixture
async def dataset(catalog, src, users):
    await catalog.add("ds", src())
    await catalog.publish("ds")
    return "ds"


async def test_grant_and_revoke(catalog, services, dataset):
    grant = await catalog.grant(dataset, user="alice", mode="download", until="2027-01-01T00:00:00+08:00",
                                max_downloads=3, min_level=2)
    assert grant["subject"] == "user:alice"
    assert dt.datetime.fromisoformat(grant["until"]) == dt.datetime(2026, 12, 31, 16, tzinfo=dt.timezone.utc)
    assert (await catalog.show(dataset))["grants"][0]["until"] == "2026-12-31T16:00:00+00:00"
    group = await catalog.grant(dataset, group="analysts", mode="view", mask="pii", watermark=False)
    assert group["mask"] == "pii" and group["watermark"] is False
    [shown_grant, _] = (await catalog.show(dataset))["grants"]
    assert shown_grant["state"] == "active" and shown_grant["max_downloads"] == 3
    assert (await catalog.list())[0]["grants"] == 2
    [event, _] = await audit_events(services.db, "admin.dataset.grant")
    assert event.details["before"] is None and event.details["after"]["mode"] == "download"
    await catalog.revoke(grant["id"])
    assert (await catalog.show(dataset))["grants"][0]["state"] == "revoked"
    [revoked] = await audit_events(services.db, "admin.dataset.revoke")
    assert (revoked.details["before"], revoked.details["after"]) == ({"state": "active"}, {"state": "revoked"})
    await unchanged(services, catalog.revoke(grant["id"]), Conflict, "already revoked")
    await unchanged(services, catalog.revoke(424242), NotFound, "no such dataset grant")
    await unchanged(services, catalog.revoke("1"), UsageError, "number")


async def test_revoking_an_expired_grant_audits_its_real_state(catalog, services, dataset):
    grant = await catalog.grant(dataset, user="alice", mode="view", until="2026-11-28T13:00:00Z")
    services.clock.advance(7200)
    await catalog.revoke(grant["id"])
    [event] = await audit_events(services.db, "admin.dataset.revoke")
    assert event.details["before"] == {"state": "expired"}


BAD_GRANTS = [
    ({}, UsageError, "exactly one of --user or --group"),
    ({"user": "alice", "group": "analysts"}, UsageError, "exactly one of --user or --group"),
    ({"user": "alice", "mode": "edit"}, UsageError, "mode must be one of"),
    ({"user": "alice", "mode": "DOWNLOAD"}, UsageError, "mode must be one of"),
    ({"user": "alice", "mask": "all"}, UsageError, "mask must be one of"),
    ({"user": "alice", "mode": "download", "mask": "pii"}, UsageError, "a masked grant can only view"),
    ({"user": "alice", "mode": "view", "max_downloads": 2}, UsageError, "--max-downloads needs a download mode"),
    ({"user": "alice", "mode": "download", "max_downloads": 0}, UsageError, "--max-downloads must be a positive"),
    ({"user": "alice", "mode": "download", "max_downloads": -1}, UsageError, "--max-downloads must be a positive"),
    ({"user": "alice", "mode": "download", "max_downloads": "abc"}, UsageError, "--max-downloads must be"),
    ({"user": "alice", "mode": "download", "max_downloads": True}, UsageError, "--max-downloads must be"),
    ({"user": "alice", "min_level": 4}, UsageError, "min level must be 1, 2 or 3"),
    ({"user": "alice", "min_level": 0}, UsageError, "min level must be 1, 2 or 3"),
    ({"user": "alice", "min_level": "2"}, UsageError, "min level must be 1, 2 or 3"),
    ({"user": "alice", "until": "yesterday"}, UsageError, "--until: not an ISO 8601 time"),
    ({"user": "alice", "until": "2020-01-01T00:00:00Z"}, UsageError, "--until lies in the past"),
    ({"group": "Bad Group"}, UsageError, "invalid group name"),
    ({"group": "x" * 40}, UsageError, "invalid group name"),
    ({"user": "nobody"}, NotFound, "no such user"),
    ({"user": "alice" + "x" * 100}, NotFound, "no such user"),
]


async def test_bad_grant_options_change_nothing(catalog, services, dataset):
    for kwargs, error, fragment in BAD_GRANTS:
        await unchanged(services, catalog.grant(dataset, **kwargs), error, fragment)
    await unchanged(services, catalog.grant("nosuch", user="alice"), NotFound, "no such dataset")


# --- download requests and decisions ----------------------------------------------------------------------


@pytest.fixture
async def approval(catalog, src, users):
    await catalog.add("ds", src(), owner="bob")
    await catalog.publish("ds")
    await catalog.grant("ds", user="alice", mode="download-with-approval")
    await catalog.grant("ds", user="carol", mode="download-with-approval")
    return "ds"


async def test_request_and_decide_by_owner_and_admin(catalog, services, approval):
    request = await catalog.request_download("alice", approval)
    assert request["status"] == "requested" and request["new"]
    again = await catalog.request_download("alice", approval)
    assert again["id"] == request["id"] and not again["new"]
    assert [r["id"] for r in await catalog.requests(decider="bob")] == [request["id"]]    # the owner
    assert [r["id"] for r in await catalog.requests(decider="carol")] == [request["id"]]  # an admin
    assert await catalog.requests(decider="alice") == []                                  # neither
    assert await catalog.requests(decider="nobody") == []
    # Someone who is neither owner nor admin learns nothing, not even that the request exists.
    await unchanged(services, catalog.decide(request["id"], True, "ok", decider="alice"), NotFound,
                    "no such download request")
    await unchanged(services, catalog.decide(request["id"], True, "", decider="bob"), UsageError, "reason is required")
    await unchanged(services, catalog.decide(request["id"], "yes", "ok", decider="bob"), UsageError, "true or false")
    decided = await catalog.decide(request["id"], True, "quarterly audit", decider="bob")
    assert decided["status"] == "approved" and decided["decided_by"] == "bob"
    assert decided["expires_at"] == (services.clock.now() + dt.timedelta(minutes=15)).isoformat()
    await unchanged(services, catalog.decide(request["id"], False, "changed my mind", decider="carol"), Conflict,
                    "already approved")
    [event] = await audit_events(services.db, "dataset.decide")
    assert event.actor == "bob" and event.details["decision"] == "approved" \
        and event.details["reason"] == "quarterly audit"
    assert "dataset.request" in await audit_types(services.db)
    services.clock.advance(16 * 60)
    assert (await catalog.requests())[0]["status"] == "expired"
    # Once expired, a new request can be made.
    assert (await catalog.request_download("alice", approval))["new"]


async def test_an_admin_refuses_and_a_requester_cannot_decide_their_own(catalog, services, approval, users):
    carols = await catalog.request_download("carol", approval)
    await unchanged(services, catalog.decide(carols["id"], True, "me", decider="carol"), UsageError,
                    "cannot be decided by the user who made it")
    alices = await catalog.request_download("alice", approval)
    refused = await catalog.decide(alices["id"], False, "not needed", decider="carol")
    assert refused["status"] == "refused" and refused["expires_at"] is None
    await unchanged(services, catalog.decide(999, True, "x"), NotFound, "no such download request")
    async with services.db() as db:
        row = await db.get(DownloadRequest, alices["id"])
        assert (row.status, row.reason, row.decided_by) == ("refused", "not needed", "carol")
    # The local CLI administrator (decider None) decides any request.
    assert (await catalog.decide(carols["id"], True, "cli"))["decided_by"] == "tester"


async def test_requests_that_cannot_be_made_look_like_nothing(catalog, services, store, src, users):
    for situation in ["no_grant", "view_grant", "unpublished", "unknown", "revoked", "used_up", "disabled"]:
        name = f"ds-{situation}".replace("_", "-")
        await catalog.add(name, src())
        await catalog.publish(name)
        grant = await catalog.grant(name, user="alice", mode="download-with-approval",
                                    max_downloads=1 if situation == "used_up" else None)
        user = "alice"
        if situation == "no_grant":
            user = "bob"
        elif situation == "view_grant":
            await catalog.grant(name, user="bob", mode="view")
            user = "bob"
        elif situation == "unpublished":
            await catalog.unpublish(name)
        elif situation == "unknown":
            name = "nosuch"
        elif situation == "revoked":
            await catalog.revoke(grant["id"])
        elif situation == "used_up":
            from bastion.store.models import DatasetGrant
            async with services.db() as db, db.begin():
                (await db.get(DatasetGrant, grant["id"])).downloads = 1
        elif situation == "disabled":
            await store.admin.set_user_status("alice", "disabled")
        error = await unchanged(services, catalog.request_download(user, name), NotFound)
        assert error.safe_message == "no such dataset", situation
