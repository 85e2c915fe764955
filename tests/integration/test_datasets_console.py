"""Datasets in the console over HTTPS: headers, identical 404s, streamed uploads and their garbage, CSRF."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from sqlalchemy import func, select, update

from bastion.datadir import init_data_dir
from bastion.publish.catalog import Catalog
from bastion.store.models import DailyUsage, Dataset, DatasetFile, DatasetGrant, DownloadRequest
from tests.conftest import BACKENDS
from tests.support.console import ConsoleClient
from tests.support.databases import create_pg_database, drop_pg_database, skip_without_pg
from tests.support.gateway import Directory, GatewayProcess

MAX_FILE = 64 * 1024  # publish.max_file_bytes of this gateway: small, so "oversize" is cheap
CSV = b"name,phone,city\nZhang San,13812345678,Beijing\nLi Si,13998765432,Shanghai\n"
VIEW_CSP = ("default-src 'none'; script-src 'none'; style-src 'self' 'nonce-{}'; img-src data:; connect-src 'none'; "
            "font-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@dataclass
class Person:
    name: str
    password: str
    totp: str | None = None


@dataclass
class Bed:
    directory: Directory
    gateway: GatewayProcess
    admin: Person
    data_dir: Path

    @property
    def port(self) -> int:
        return self.gateway.port

    def catalog(self) -> Catalog:
        return Catalog.from_services(self.directory.services, actor="test")

    def run(self, coro):
        return self.directory.run(coro)

    def user(self, name: str, roles=("user",), totp: bool = False, groups=()) -> Person:
        password = f"correct-horse-{name}-battery"
        self.directory.admin().add_user(name, roles=list(roles), password=password, groups=list(groups))
        secret = None
        if totp:
            uri = self.directory.admin().enroll_totp(name, "Bastion")["uri"]
            secret = parse_qs(urlparse(uri).query)["secret"][0]
        return Person(name, password, secret)

    def state(self) -> tuple:
        """What an upload may change: datasets, files, grants, and the blob files on disk."""
        async def counts(services):
            async with services.db() as db:
                return tuple([(await db.execute(select(func.count()).select_from(model))).scalar_one()
                              for model in (Dataset, DatasetFile, DatasetGrant)])
        blobs = sorted(str(p.relative_to(self.data_dir)) for p in (self.data_dir / "blobs").rglob("*") if p.is_file()) \
            if (self.data_dir / "blobs").exists() else []
        return self.directory.call(counts), blobs


@pytest.fixture(scope="module", params=BACKENDS)
def bed(request, tmp_path_factory):
    """A gateway of its own (small publish.max_file_bytes), once per backend, each with a database of its own."""
    created = None
    if request.param == "postgresql":
        created = create_pg_database()
        if created is None:
            skip_without_pg()
    data = tmp_path_factory.mktemp(f"datasets-{request.param}") / "data"
    asyncio.run(init_data_dir(data, listen="127.0.0.1:0", database_url=created[0] if created else ""))
    directory = Directory(data)
    gateway = GatewayProcess(data, env={"BASTION_PUBLISH_MAX_FILE_BYTES": str(MAX_FILE),
                                        "BASTION_AUTH_RATE_LIMIT_FAILURES": "100000"}).start()
    testbed = Bed(directory, gateway, Person("", ""), data)
    testbed.admin = testbed.user("pubadmin", roles=("admin",), totp=True)
    yield testbed
    gateway.stop()
    directory.close()
    if created is not None:
        drop_pg_database(created[1])


_ADMIN_SESSION: dict[int, tuple[str, str]] = {}


async def admin_client(bed: Bed) -> ConsoleClient:
    """The admin's level-2 session, logged in once (a TOTP code is accepted only once per step)."""
    console = ConsoleClient(bed.port)
    if bed.port not in _ADMIN_SESSION:
        await console.login(bed.admin.name, bed.admin.password, bed.admin.totp, level=2)
        _ADMIN_SESSION[bed.port] = (console.cookie(), console.csrf)
    cookie, console.csrf = _ADMIN_SESSION[bed.port]
    console.http.cookie_jar.update_cookies({"__Host-bastion": cookie})
    return console


async def user_client(bed: Bed, person: Person, level: int = 1) -> ConsoleClient:
    console = ConsoleClient(bed.port)
    await console.login(person.name, person.password, person.totp, level=level)
    return console


async def upload(console: ConsoleClient, path: str, fields: dict[str, str], filename: str, content: bytes,
                 csrf: str | None = None, declare_size: bool = True):
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    if declare_size and "size" not in fields:
        form.add_field("size", str(len(content)))
    form.add_field("file", content, filename=filename, content_type="application/octet-stream")
    headers = {"Origin": console.origin, "X-CSRF-Token": console.csrf if csrf is None else csrf}
    async with console.http.post(console.base + path, data=form, headers=headers) as response:
        return response.status, await response.json()


def _comparable(headers) -> dict:
    return {k.lower(): v for k, v in headers.items() if k.lower() != "date"}


async def publish_csv(bed: Bed, name: str, content: bytes = CSV, **grant) -> int | None:
    catalog = bed.catalog()
    source = bed.data_dir.parent / f"{name}.csv"
    source.write_bytes(content)
    bed.run(catalog.add(name, source))
    bed.run(catalog.publish(name))
    if grant:
        return bed.run(catalog.grant(name, **grant))["id"]
    return None


# --- headers ----------------------------------------------------------------------------------------------


async def test_upload_publish_grant_view_and_download_headers(bed):
    reader = bed.user("hdr-reader")
    async with await admin_client(bed) as admin:
        status, data = await upload(admin, "/api/v1/admin/datasets", {"name": "hdr-people",
                                                                      "classification": "internal"},
                                    "people.csv", CSV)
        assert status == 200, data
        assert data["files"][0]["sha256"] == hashlib.sha256(CSV).hexdigest()
        status, data = await admin.post("/api/v1/admin/datasets/hdr-people/publish", {})
        assert status == 200, data
        status, data = await admin.post("/api/v1/admin/datasets/hdr-people/grants",
                                        {"user": reader.name, "mode": "download"})
        assert status == 200 and data["mode"] == "download", data
    async with await user_client(bed, reader) as console:
        status, text, headers = await console.get("/datasets/hdr-people/view?path=people.csv")
        assert status == 200
        nonce = re.search(r"'nonce-([^']+)'", headers["Content-Security-Policy"]).group(1)
        assert headers["Content-Security-Policy"] == VIEW_CSP.format(nonce)
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Disposition" not in headers
        assert "<script" not in text  # the view page runs no script at all
        view_id = re.search(r'<code id="view-id">([0-9a-f]{8})</code>', text).group(1)
        # the watermark tile arrives in the one style element the CSP lets through
        assert re.search(rf'<style nonce="{re.escape(nonce)}">\.watermarked {{ background-image: '
                         r'url\("data:image/png;base64,[A-Za-z0-9+/=]+"\); \}</style>', text)
        assert "<td>Beijing</td>" in text
        status, text, headers = await console.get("/api/v1/datasets/hdr-people/view")
        body = json.loads(text)
        assert status == 200 and body["header"] == ["name", "phone", "city"] and body["view_id"] != view_id
        assert body["watermark"].startswith(f"{reader.name} | ") and body["watermark_png"]
        assert "Content-Disposition" not in headers and headers["Cache-Control"] == "no-store"
        async with console.http.get(console.base + "/datasets/hdr-people/download?path=people.csv") as response:
            content = await response.read()
            assert response.status == 200
            assert response.headers["Content-Disposition"] == \
                "attachment; filename=\"people.csv\"; filename*=UTF-8''people.csv"
            assert response.headers["Content-Type"] == "application/octet-stream"
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Content-SHA256"] == hashlib.sha256(CSV).hexdigest()
            assert int(response.headers["Content-Length"]) == len(CSV)
        assert content == CSV


async def test_view_of_a_file_without_viewer_and_of_an_image(bed):
    import io

    from PIL import Image

    reader = bed.user("img-reader")
    picture = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(picture, format="PNG")
    async with await admin_client(bed) as admin:
        for name, filename, content in (("img-photo", "photo.png", picture.getvalue()),
                                        ("img-blob", "data.bin", b"\x00\x01binary"),
                                        ("img-wide", "wide.txt", "secret words".encode("utf-16"))):
            assert (await upload(admin, "/api/v1/admin/datasets", {"name": name}, filename, content))[0] == 200
            assert (await admin.post(f"/api/v1/admin/datasets/{name}/publish", {}))[0] == 200
            assert (await admin.post(f"/api/v1/admin/datasets/{name}/grants", {"user": reader.name,
                                                                               "mode": "view"}))[0] == 200
    async with await user_client(bed, reader) as console:
        status, text, headers = await console.get("/datasets/img-photo/view")
        assert status == 200 and "Content-Disposition" not in headers
        image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text).group(1)
        import base64

        shown = Image.open(io.BytesIO(base64.b64decode(image)))
        assert shown.size == (120, 80)
        assert shown.convert("RGB").tobytes() != Image.new("RGB", (120, 80), (200, 30, 30)).tobytes()  # marked
        status, text, _ = await console.get("/datasets/img-blob/view")
        assert status == 200 and 'id="no-viewer"' in text and "binary" not in text
        # a text file that cannot be decoded: the reason, never the bytes
        status, text, headers = await console.get("/datasets/img-wide/view")
        assert status == 422 and "not text in UTF-8 or GB18030" in text and "Content-Disposition" not in headers
        assert "s\x00e\x00c" not in text and "secret" not in text
        status, text, _ = await console.get("/api/v1/datasets/img-wide/view")
        assert status == 422 and "UTF-16" in json.loads(text)["error"]


# --- refusals look like a dataset that never existed ------------------------------------------------------


async def test_every_refusal_is_the_404_of_a_missing_dataset(bed):
    ghost = bed.user("ref-user")
    catalog = bed.catalog()
    await publish_csv(bed, "ref-ok", user=ghost.name, mode="download")
    unpublished = await publish_csv(bed, "ref-unpub", user=ghost.name, mode="download")
    bed.run(catalog.unpublish("ref-unpub"))
    await publish_csv(bed, "ref-ungranted")
    expired = await publish_csv(bed, "ref-expired", user=ghost.name, mode="download")
    revoked = await publish_csv(bed, "ref-revoked", user=ghost.name, mode="download")
    bed.run(catalog.revoke(revoked))
    used = await publish_csv(bed, "ref-used", user=ghost.name, mode="download", max_downloads=1)
    await publish_csv(bed, "ref-level", user=ghost.name, mode="download", min_level=3)
    await publish_csv(bed, "ref-approval", user=ghost.name, mode="download-with-approval")

    async def rewind(services):
        async with services.db() as db, db.begin():
            await db.execute(update(DatasetGrant).where(DatasetGrant.id == expired)
                             .values(valid_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
            await db.execute(update(DatasetGrant).where(DatasetGrant.id == used).values(downloads=1))
    bed.directory.call(rewind)
    assert unpublished is not None
    refused = ["ref-unpub", "ref-ungranted", "ref-expired", "ref-revoked", "ref-level"]
    async with await user_client(bed, ghost) as console:
        for suffix in ("", "/view", "/download"):
            for prefix in ("/datasets/", "/api/v1/datasets/"):
                status, missing, missing_headers = await console.get(f"{prefix}never-existed{suffix}")
                assert status == 404
                assert (await console.get(f"{prefix}ref-ok{suffix}"))[0] == 200
                # an approval grant shows nothing before its approval: no view, no download
                extra = {"/download": ["ref-used", "ref-approval"], "/view": ["ref-approval"]}.get(suffix, [])
                for name in refused + extra:
                    status, text, headers = await console.get(f"{prefix}{name}{suffix}")
                    assert (status, text, _comparable(headers)) == (404, missing, _comparable(missing_headers)), \
                        (name, suffix, prefix)
        # a view or download started from another site (even of the same domain) is refused the same way
        for suffix in ("/view", "/download"):
            for site in ("cross-site", "same-site"):
                status, text, headers = await console.get(f"/datasets/ref-ok{suffix}", headers={"Sec-Fetch-Site": site})
                assert (status, text) == (404, (await console.get(f"/datasets/never-existed{suffix}"))[1]), (suffix, site)
        # the listing holds only what may be opened
        _, text, _ = await console.get("/api/v1/datasets")
        listed = {d["name"]: d for d in json.loads(text)}
        assert set(listed) == {"ref-ok", "ref-used", "ref-level", "ref-approval"}
        assert listed["ref-level"]["view"] == {"allowed": False, "step_up": 3}
        assert listed["ref-used"]["download"] == {"allowed": False, "step_up": None}


async def test_view_over_the_daily_row_limit_is_a_404(bed):
    reader = bed.user("quota-reader")
    await publish_csv(bed, "quota-rows", user=reader.name, mode="view")
    async with await user_client(bed, reader) as console:
        assert (await console.get("/datasets/quota-rows/view"))[0] == 200  # starts today's counter
        _, missing, missing_headers = await console.get("/datasets/never-existed/view")
        await _set_rows(bed, reader.name)
        status, text, headers = await console.get("/datasets/quota-rows/view")
        assert (status, text, _comparable(headers)) == (404, missing, _comparable(missing_headers))


async def _set_rows(bed: Bed, user: str) -> None:
    from bastion.store.models import User

    async def work(services):
        async with services.db() as db, db.begin():
            uid = (await db.execute(select(User.id).where(User.name == user))).scalar_one()
            day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
            await db.execute(update(DailyUsage).where(DailyUsage.user_id == uid, DailyUsage.day == day)
                             .values(rows_viewed=services.config["publish.rows_per_day"]))
    bed.directory.call(work)


# --- garbage uploads change nothing -----------------------------------------------------------------------

GARBAGE = {
    "malformed": ("bad.csv", b'a,b,c\n1,2,3\n4,"5\n', True, "malformed CSV"),
    "ragged": ("ragged.csv", b"a,b,c\n1,2\n", True, "malformed CSV: line 2 has 2 fields"),
    "utf16": ("wide.csv", "name,city\nZhang,Beijing\n".encode("utf-16"), True, "UTF-16 or binary"),
    "binary": ("noise.csv", bytes(range(256)) * 4, True, "UTF-16 or binary"),
    "zero": ("empty.csv", b"", True, "empty"),
    "oversize-declared": ("big.txt", b"x" * (MAX_FILE + 1), True, f"larger than publish.max_file_bytes ({MAX_FILE}"),
    "oversize-streamed": ("big.txt", b"x" * (MAX_FILE + 1), False,
                          f"larger than publish.max_file_bytes ({MAX_FILE}"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
async def test_garbage_upload_gives_a_clear_error_and_changes_nothing(bed, case):
    filename, content, declare, message = GARBAGE[case]
    async with await admin_client(bed) as admin:
        # a version of an existing dataset, and a new dataset: both refused, neither leaves a trace
        if not bed.run(_exists("garbage-base", bed)):
            assert (await upload(admin, "/api/v1/admin/datasets", {"name": "garbage-base"}, "base.txt",
                                 b"hello\n"))[0] == 200
        before = bed.state()
        status, data = await upload(admin, "/api/v1/admin/datasets", {"name": f"garbage-{case}"}, filename,
                                    content, declare_size=declare)
        assert status == 400 and message in data["error"], data
        status, data = await upload(admin, "/api/v1/admin/datasets/garbage-base/versions", {}, filename, content,
                                    declare_size=declare)
        assert status == 400 and message in data["error"], data
        assert bed.state() == before
        assert bed.run(bed.catalog().show("garbage-base"))["version"] == 1


async def _exists(name: str, bed: Bed) -> bool:
    async with bed.directory.services.db() as db:
        return (await db.execute(select(Dataset.id).where(Dataset.name == name))).first() is not None


async def test_upload_cut_off_midway_leaves_nothing(bed):
    before = bed.state()
    async with await admin_client(bed) as admin:
        cookie, csrf = admin.cookie(), admin.csrf
    boundary = "----bastion-cut"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ncut-off\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\n{MAX_FILE - 10}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.txt\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    total = len(head) + MAX_FILE - 10 + len(f"\r\n--{boundary}--\r\n")
    request = (f"POST /api/v1/admin/datasets HTTP/1.1\r\nHost: localhost:{bed.port}\r\n"
               f"Origin: https://localhost:{bed.port}\r\nX-CSRF-Token: {csrf}\r\n"
               f"Cookie: __Host-bastion={cookie}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {total}\r\n\r\n").encode() + head + b"y" * 20000
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tmp = bed.data_dir / "blobs" / "tmp"
    staged_before = set(tmp.iterdir()) if tmp.exists() else set()
    raw = socket.create_connection(("127.0.0.1", bed.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        # the server is mid-file (its staging file exists) when the client goes away
        for _ in range(200):
            if tmp.exists() and set(tmp.iterdir()) - staged_before:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the upload never reached the blob store's staging area")
    for _ in range(200):
        if bed.state() == before and not (set(tmp.iterdir()) - staged_before):
            break
        await asyncio.sleep(0.05)
    assert bed.state() == before
    assert not bed.run(_exists("cut-off", bed))


# --- bad form fields and CSRF ------------------------------------------------------------------------------

BAD_UPLOAD_FIELDS = [
    ({"name": "../etc"}, "invalid dataset name"),
    ({"name": ""}, "invalid dataset name"),
    ({"name": "x" * 70}, "invalid dataset name"),
    ({"name": "<script>"}, "invalid dataset name"),
    ({"name": "okname", "classification": "ultra"}, "classification must be one of"),
    ({"name": "okname", "owner": "nobody-here"}, "no such user"),
    ({"name": "okname", "colour": "red"}, "unknown form field"),
    ({"name": "okname", "size": "-5"}, "size must be a number"),
    ({"name": "okname", "description": "a\x01b"}, "control characters"),
]
BAD_GRANTS = [
    ({"user": "bf-reader", "mode": "admin"}, "mode must be one of"),
    ({"user": "bf-reader", "mode": "view", "until": "yesterday"}, "not an ISO 8601 time"),
    ({"user": "bf-reader", "mode": "view", "until": "2000-01-01T00:00:00Z"}, "lies in the past"),
    ({"user": "bf-reader", "mode": "view", "min_level": 4}, "min level must be 1, 2 or 3"),
    ({"user": "bf-reader", "mode": "view", "min_level": 0}, "min level must be 1, 2 or 3"),
    ({"user": "bf-reader", "mode": "download", "max_downloads": 0}, "--max-downloads must be a positive number"),
    ({"user": "bf-reader", "mode": "download", "max_downloads": "3"}, "max_downloads has the wrong type"),
    ({"user": "bf-reader", "mode": "view", "max_downloads": 3}, "--max-downloads needs a download mode"),
    ({"user": "bf-reader", "mode": "view", "mask": "full"}, "mask must be one of"),
    ({"user": "bf-reader", "mode": "download", "mask": "pii"}, "a masked grant can only view"),
    ({"user": "bf-reader", "group": "staff", "mode": "view"}, "give exactly one of --user or --group"),
    ({"mode": "view"}, "give exactly one of --user or --group"),
    ({"group": "Bad Group!", "mode": "view"}, "invalid group name"),
    ({"user": "bf-reader", "mode": "view", "watermark": "no"}, "watermark has the wrong type"),
]
BAD_PUBLISH = [
    ({"until": "2000-01-01T00:00:00Z"}, "lies in the past"),
    ({"from": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "--from must be before --until"),
    ({"from": "soon"}, "not an ISO 8601 time"),
]


async def test_bad_form_fields_are_refused_clearly_and_change_nothing(bed):
    bed.user("bf-reader")
    await publish_csv(bed, "bf-data")
    async with await admin_client(bed) as admin:
        before = bed.state()
        shown = bed.run(bed.catalog().show("bf-data"))
        for fields, message in BAD_UPLOAD_FIELDS:
            status, data = await upload(admin, "/api/v1/admin/datasets", fields, "ok.txt", b"fine\n")
            assert status in (400, 404) and message in data["error"], (fields, data)
        for body, message in BAD_GRANTS:
            status, data = await admin.post("/api/v1/admin/datasets/bf-data/grants", body)
            assert status == 400 and message in data["error"], (body, data)
        for body, message in BAD_PUBLISH:
            status, data = await admin.post("/api/v1/admin/datasets/bf-data/publish", body)
            assert status == 400 and message in data["error"], (body, data)
        # the file part must come last, and must be there
        form = aiohttp.FormData()
        form.add_field("file", b"x\n", filename="a.txt")
        form.add_field("name", "late-name")
        async with admin.http.post(admin.base + "/api/v1/admin/datasets", data=form,
                                   headers={"Origin": admin.origin, "X-CSRF-Token": admin.csrf}) as response:
            assert response.status == 400 and "invalid dataset name" in (await response.json())["error"]
        status, data = await admin.post("/api/v1/admin/datasets", {"name": "json-not-multipart"})
        assert status == 415 and data["error"] == "send multipart/form-data"
        assert bed.state() == before
        assert bed.run(bed.catalog().show("bf-data")) == shown


async def test_state_changes_without_csrf_are_refused_and_change_nothing(bed):
    reader = bed.user("csrf-reader")
    grant_id = await publish_csv(bed, "csrf-data", user=reader.name, mode="download-with-approval")
    async with await admin_client(bed) as admin:
        before = bed.state()
        shown = bed.run(bed.catalog().show("csrf-data"))
        for csrf in ("", "wrong-token"):
            status, data = await upload(admin, "/api/v1/admin/datasets", {"name": "csrf-new"}, "a.txt", b"a\n",
                                        csrf=csrf)
            assert status == 403 and data["error"] == "missing or wrong CSRF token"
            status, _ = await upload(admin, "/api/v1/admin/datasets/csrf-data/versions", {}, "a.txt", b"a\n",
                                     csrf=csrf)
            assert status == 403
            for path, body in (("/api/v1/admin/datasets/csrf-data/publish", {}),
                               ("/api/v1/admin/datasets/csrf-data/unpublish", {}),
                               ("/api/v1/admin/datasets/csrf-data/grants", {"user": reader.name, "mode": "view"}),
                               (f"/api/v1/admin/dataset-grants/{grant_id}/revoke", {})):
                assert (await admin.post(path, body, csrf=csrf))[0] == 403, path
        assert bed.state() == before and bed.run(bed.catalog().show("csrf-data")) == shown
    async with await user_client(bed, reader) as console:
        assert (await console.post("/api/v1/datasets/csrf-data/request", {}, csrf=""))[0] == 403
        assert bed.run(bed.catalog().requests()) == [r for r in bed.run(bed.catalog().requests())
                                                      if r["dataset"] != "csrf-data"]
        status, data = await console.post("/api/v1/datasets/csrf-data/request", {})
        assert status == 200 and data["status"] == "requested"
    async with await admin_client(bed) as admin:
        status, _ = await admin.post(f"/api/v1/dataset-requests/{data['id']}/decide",
                                     {"approve": True, "reason": "ok"}, csrf="")
        assert status == 403
        assert bed.run(bed.catalog().requests())[0]["status"] == "requested"


async def test_approval_flow_over_the_api(bed):
    reader = bed.user("ap-reader")
    owner = bed.user("ap-owner", totp=True)
    stranger = bed.user("ap-stranger", totp=True)
    catalog = bed.catalog()
    source = bed.data_dir.parent / "ap.csv"
    source.write_bytes(CSV)
    bed.run(catalog.add("ap-data", source, owner=owner.name))
    bed.run(catalog.publish("ap-data"))
    bed.run(catalog.grant("ap-data", user=reader.name, mode="download-with-approval"))
    async with await user_client(bed, reader) as console:
        assert (await console.get("/datasets/ap-data/download"))[0] == 404  # not before the approval
        status, request = await console.post("/api/v1/datasets/ap-data/request", {})
        assert status == 200 and request["status"] == "requested"
        assert (await console.post(f"/api/v1/dataset-requests/{request['id']}/decide",
                                   {"approve": True, "reason": "me"}))[0] == 403  # level 1 only
    async with await user_client(bed, stranger, level=2) as console:
        status, data = await console.post(f"/api/v1/dataset-requests/{request['id']}/decide",
                                          {"approve": True, "reason": "sure"})
        assert (status, data) == (404, {"error": "not found"})
        _, text, _ = await console.get("/api/v1/dataset-requests")
        assert json.loads(text) == []
    async with await user_client(bed, owner, level=2) as console:
        _, text, _ = await console.get("/api/v1/dataset-requests")
        assert [r["id"] for r in json.loads(text)] == [request["id"]]
        status, data = await console.post(f"/api/v1/dataset-requests/{request['id']}/decide",
                                          {"approve": True, "reason": "needed for the audit"})
        assert status == 200 and data["status"] == "approved" and data["decided_by"] == owner.name
    async with await user_client(bed, reader) as console:
        status, text, _ = await console.get("/datasets/ap-data/download")
        assert status == 200 and text.encode() == CSV
        assert (await console.get("/datasets/ap-data/download"))[0] == 404  # one time only

    async def request_row(services):
        async with services.db() as db:
            return (await db.get(DownloadRequest, request["id"])).status
    assert bed.directory.call(request_row) == "used"


async def test_refused_request_shows_its_reason_and_may_be_asked_again(bed):
    reader = bed.user("rf-reader")
    await publish_csv(bed, "rf-data", user=reader.name, mode="download-with-approval")
    async with await user_client(bed, reader) as console:
        _, request = await console.post("/api/v1/datasets/rf-data/request", {})
    async with await admin_client(bed) as admin:
        status, data = await admin.post(f"/api/v1/dataset-requests/{request['id']}/decide",
                                        {"approve": False, "reason": "<b>not</b> this quarter"})
        assert status == 200 and data["status"] == "refused"
        status, data = await admin.post(f"/api/v1/dataset-requests/{request['id']}/decide",
                                        {"approve": True, "reason": "changed my mind"})
        assert status == 409  # decided once
    async with await user_client(bed, reader) as console:
        _, text, _ = await console.get("/api/v1/datasets")
        item = next(d for d in json.loads(text) if d["name"] == "rf-data")
        assert item["request"]["status"] == "refused" and item["request"]["reason"] == "<b>not</b> this quarter"
        _, page, _ = await console.get("/datasets")
        assert "&lt;b&gt;not&lt;/b&gt; this quarter" in page and "<b>not</b>" not in page
        assert 'class="request" data-post="/api/v1/datasets/rf-data/request"' in page
        assert (await console.get("/datasets/rf-data/download"))[0] == 404
        status, again = await console.post("/api/v1/datasets/rf-data/request", {})
        assert status == 200 and again["id"] != request["id"] and again["status"] == "requested"


async def test_one_approval_downloads_each_file_of_a_folder_dataset_once_in_the_console(bed):
    reader = bed.user("cp-reader")
    folder = bed.data_dir.parent / "cp-src"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_bytes(CSV)
    (folder / "sub" / "b.txt").write_bytes(b"second\n")
    catalog = bed.catalog()
    bed.run(catalog.add("cp-data", folder))
    bed.run(catalog.publish("cp-data"))
    bed.run(catalog.grant("cp-data", user=reader.name, mode="download-with-approval"))
    request = bed.run(catalog.request_download(reader.name, "cp-data"))
    bed.run(catalog.decide(request["id"], True, "quarterly audit"))
    async with await user_client(bed, reader) as console:
        for path, content in (("a.csv", CSV), ("sub/b.txt", b"second\n")):
            status, text, _ = await console.get(f"/datasets/cp-data/download?path={path}")
            assert status == 200 and text.encode() == content, path
        # The copy is whole: a file again needs a new approval.
        assert (await console.get("/datasets/cp-data/download?path=a.csv"))[0] == 404


async def test_folder_dataset_files_paths_and_pages(bed):
    reader = bed.user("fold-reader")
    folder = bed.data_dir.parent / "fold-src"
    (folder / "sub").mkdir(parents=True)
    (folder / "table.csv").write_bytes(b"n,square\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(250)))
    (folder / "sub" / "notes.txt").write_bytes(b"first line <script>alert(1)</script>\nsecond\n")
    catalog = bed.catalog()
    bed.run(catalog.add("fold-data", folder))
    bed.run(catalog.publish("fold-data"))
    bed.run(catalog.grant("fold-data", user=reader.name, mode="download"))
    async with await user_client(bed, reader) as console:
        _, missing, missing_headers = await console.get("/datasets/never-existed/download")
        status, text, _ = await console.get("/datasets/fold-data")
        assert status == 200 and "sub/notes.txt" in text and "table.csv" in text
        status, text, _ = await console.get("/datasets/fold-data/view?path=sub/notes.txt")
        assert status == 200 and "first line &lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
        # pages of a table: 100 rows each, links both ways, a bad page number is a plain 400
        status, text, _ = await console.get("/datasets/fold-data/view?path=table.csv&page=2")
        assert status == 200 and "<td>100</td>" in text and "<td>99</td>" not in text
        assert 'href="/datasets/fold-data/view?path=table.csv&amp;page=1"' in text
        assert 'href="/datasets/fold-data/view?path=table.csv&amp;page=3"' in text
        status, text, _ = await console.get("/datasets/fold-data/view?path=table.csv&page=3")
        assert "<td>249</td>" in text and 'id="next"' not in text
        for bad in ("0", "-1", "x", "99999999999"):
            assert (await console.get(f"/datasets/fold-data/view?path=table.csv&page={bad}"))[0] == 400
        # several files: a download names its file; no name, a wrong name or an escape is the missing 404
        for query in ("", "?path=nope.csv", "?path=../table.csv", "?path=/etc/passwd", "?path=sub/../table.csv"):
            status, text, headers = await console.get(f"/datasets/fold-data/download{query}")
            assert (status, text, _comparable(headers)) == (404, missing, _comparable(missing_headers)), query
        async with console.http.get(console.base + "/datasets/fold-data/download?path=sub/notes.txt") as response:
            assert response.status == 200 and response.headers["Content-Disposition"].startswith(
                'attachment; filename="notes.txt"')
            assert await response.read() == (folder / "sub" / "notes.txt").read_bytes()


async def test_group_grant_with_every_option_and_a_new_version(bed):
    member = bed.user("grp-member", groups=("analysts",))
    outsider = bed.user("grp-outsider")
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(microsecond=0)
    async with await admin_client(bed) as admin:
        assert (await upload(admin, "/api/v1/admin/datasets", {"name": "grp-data", "description": "v1"},
                             "grp.csv", CSV))[0] == 200
        status, data = await admin.post("/api/v1/admin/datasets/grp-data/publish",
                                        {"until": until.isoformat()})
        assert status == 200 and data["until"] == until.isoformat()
        status, grant = await admin.post("/api/v1/admin/datasets/grp-data/grants", {
            "group": "analysts", "mode": "download", "until": until.isoformat(), "max_downloads": 2,
            "min_level": 1, "mask": "none", "watermark": False})
        assert status == 200, grant
        assert (grant["subject"], grant["max_downloads"], grant["min_level"], grant["watermark"], grant["until"]) == \
            ("group:analysts", 2, 1, False, until.isoformat())
        second = CSV + b"Wang Wu,13700000000,Shenzhen\n"
        status, data = await upload(admin, "/api/v1/admin/datasets/grp-data/versions", {}, "grp.csv", second)
        assert status == 200 and data["version"] == 2
        _, text, _ = await admin.get("/api/v1/admin/datasets/grp-data")
        shown = json.loads(text)
        assert [v["version"] for v in shown["versions"]] == [1, 2] and shown["files"][0]["size"] == len(second)
    async with await user_client(bed, member) as console:
        status, text, headers = await console.get("/datasets/grp-data/view")
        assert status == 200 and "<td>Shenzhen</td>" in text  # the current version
        assert "watermarked" not in text and "<style" not in text  # --no-watermark: no tile at all
        for _ in range(2):
            assert (await console.get("/datasets/grp-data/download"))[0] == 200
        assert (await console.get("/datasets/grp-data/download"))[0] == 404  # max downloads used up
    async with await user_client(bed, outsider) as console:
        assert (await console.get("/datasets/grp-data/view"))[0] == 404
    async with await admin_client(bed) as admin:
        status, _ = await admin.post(f"/api/v1/admin/dataset-grants/{grant['id']}/revoke", {})
        assert status == 200
        assert (await admin.post(f"/api/v1/admin/dataset-grants/{grant['id']}/revoke", {}))[0] == 409
        assert (await admin.post("/api/v1/admin/datasets/grp-data/unpublish", {}))[0] == 200
        assert (await admin.post("/api/v1/admin/datasets/grp-data/unpublish", {}))[0] == 409
    async with await user_client(bed, member) as console:
        assert (await console.get("/datasets/grp-data/view"))[0] == 404
