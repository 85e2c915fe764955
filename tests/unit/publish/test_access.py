"""The serving boundary: grant mode × action × state, each cell either served or refused exactly like a dataset
that does not exist, with every counter left as it was; downloads counted and audited once; approvals one-time;
daily limits with shortened pages and alerts; authorizations the policy did not mint are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import threading

import pytest
from sqlalchemy import select, update

from bastion.auth.identity import Identity
from bastion.errors import UsageError
from bastion.policy import AllowDataset, DatasetAuthorization, DatasetFacts, DatasetGrantFacts, DatasetRef, \
    decide_dataset
from bastion.publish import access
from bastion.publish.catalog import Catalog
from bastion.publish.errors import NO_SUCH_DATASET, Refused, RenderError
from bastion.store.models import (AuditEvent, DailyUsage, Dataset, DatasetGrant, DownloadCopy, DownloadCopyFile,
                                  DownloadRequest, User)

from .conftest import audit_events, authorize

ROWS = 30
CSV = ("id,city\n" + "".join(f"{i},city{i}\n" for i in range(ROWS))).encode()
DAY = "2026-11-28"


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(CSV)
    return path


async def snapshot(services) -> dict:
    """Every counter a view or download could move (audit events apart from alerts included)."""
    async with services.db() as db:
        grants = [(g.id, g.downloads) for g in (await db.execute(select(DatasetGrant).order_by(DatasetGrant.id)))
                  .scalars()]
        requests = [(r.id, r.status) for r in (await db.execute(select(DownloadRequest)
                                                                .order_by(DownloadRequest.id))).scalars()]
        usage = [(u.user_id, u.day, u.rows_viewed, u.bytes_downloaded)
                 for u in (await db.execute(select(DailyUsage).order_by(DailyUsage.user_id))).scalars()]
        events = [e.type for e in (await db.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars()
                  if not e.type.startswith("alert.")]
        copies = [(c.id, c.grant_id, c.user_id, c.version) for c in (await db.execute(select(DownloadCopy)
                                                                                        .order_by(DownloadCopy.id))).scalars()]
        served = sorted((f.copy_id, f.file_id) for f in (await db.execute(select(DownloadCopyFile))).scalars())
    return {"grants": grants, "requests": requests, "usage": usage, "events": events, "copies": copies,
            "served": served}


async def refused(services, call) -> Refused:
    """`call` must be refused with the one safe message and leave every counter as it was."""
    before = await snapshot(services)
    with pytest.raises(Refused) as caught:
        await call
    assert caught.value.safe_message == NO_SUCH_DATASET and str(caught.value) == NO_SUCH_DATASET
    assert await snapshot(services) == before
    return caught.value


async def identity_for(services, name: str, level: int = 2) -> Identity:
    async with services.db() as db:
        user = (await db.execute(select(User).where(User.name == name))).scalar_one()
    return Identity(user.id, user.name, tuple(user.roles), tuple(user.groups), level, ("password",), "192.0.2.7")


async def decisions(services, identity, name):
    now = services.clock.now()
    return {action: await services.policy.authorize_dataset(identity, name, action, now)
            for action in ("view", "download")}


async def read_all(stream) -> bytes:
    async with stream:
        return b"".join([piece async for piece in stream])


# --- the matrix -------------------------------------------------------------------------------------------

MODES = {"view": ("view", False), "download": ("download", False),
         "approved": ("download-with-approval", True), "unapproved": ("download-with-approval", False)}
STATES = ["published", "unpublished", "scheduled", "window_expired", "grant_expired", "revoked", "used_up",
          "over_rows", "over_bytes", "below_level", "disabled", "left_group", "new_version", "renamed",
          "deleted", "stale"]


def expected(mode: str, state: str, action: str) -> bool:
    if mode == "unapproved" or (action == "download" and mode == "view"):
        return False  # an approval grant shows nothing before its approval
    if state == "used_up" and mode == "approved":
        return False  # its one approved download is spent
    return {"published": True, "used_up": action == "view" or mode == "view", "over_rows": action == "download",
            "over_bytes": action == "view"}.get(state, False)


async def apply_state(state, services, catalog, store, name, grant_id, user, identity):
    now = services.clock.now()
    if state == "unpublished":
        await catalog.unpublish(name)
    elif state == "scheduled":
        await catalog.publish(name, from_=now + dt.timedelta(hours=1))
    elif state == "window_expired":
        async with services.db() as db, db.begin():
            await db.execute(update(Dataset).where(Dataset.name == name).values(publish_until=now))
    elif state == "grant_expired":
        async with services.db() as db, db.begin():
            await db.execute(update(DatasetGrant).where(DatasetGrant.id == grant_id).values(valid_until=now))
    elif state == "revoked":
        await catalog.revoke(grant_id)
    elif state == "used_up":
        decision = await services.policy.authorize_dataset(identity, name, "download", now)
        if isinstance(decision, AllowDataset):  # spend the only download with a fresh decision
            stream, _, _ = await access.download(services, decision.authorization)
            await stream.aclose()
    elif state == "over_rows":
        await set_usage(services, identity.user_id, rows=services.config["publish.rows_per_day"])
    elif state == "over_bytes":
        await set_usage(services, identity.user_id, bytes_=services.config["publish.bytes_per_day"])
    elif state == "disabled":
        await store.admin.set_user_status(user, "disabled")
    elif state == "left_group":
        async with services.db() as db, db.begin():
            await db.execute(update(User).where(User.name == user).values(groups=[]))
    elif state == "new_version":
        await catalog.update(name, services.extra_file)
    elif state == "renamed":
        async with services.db() as db, db.begin():
            await db.execute(update(Dataset).where(Dataset.name == name).values(name=name + "-x"))
    elif state == "deleted":
        async with services.db() as db, db.begin():
            await db.execute(DatasetGrant.__table__.delete().where(DatasetGrant.id == grant_id))
            await db.execute(Dataset.__table__.delete().where(Dataset.name == name))
    elif state == "stale":
        services.clock.advance(access.MAX_AUTHORIZATION_AGE.total_seconds() + 1)


async def set_usage(services, user_id, rows=0, bytes_=0):
    async with services.db() as db, db.begin():
        db.add(DailyUsage(user_id=user_id, day=DAY, rows_viewed=rows, bytes_downloaded=bytes_))


@pytest.mark.parametrize("mode", list(MODES))
async def test_matrix(make_services, store, csv_file, tmp_path, mode):
    services = make_services(publish__rows_per_page=10, publish__rows_per_day=1000, publish__bytes_per_day=10_000)
    services.extra_file = tmp_path / "v2.csv"
    services.extra_file.write_bytes(CSV + b"99,new\n")
    catalog = Catalog.from_services(services, actor="tester")
    grant_mode, approve = MODES[mode]
    for n, state in enumerate(STATES):
        user, name = f"u{n}", f"ds{n}"
        group = state == "left_group"
        await store.admin.add_user(user, groups=["team"] if group else [])
        await catalog.add(name, csv_file, classification="confidential" if state == "below_level" else "internal")
        await catalog.publish(name)
        grant = await catalog.grant(name, user=None if group else user, group="team" if group else None,
                                    mode=grant_mode, max_downloads=1 if state == "used_up" and mode != "view"
                                    else None)
        if approve:
            request = await catalog.request_download(user, name)
            await catalog.decide(request["id"], True, "approved for the test")
        identity = await identity_for(services, user, level=1 if state == "below_level" else 2)
        before = await decisions(services, identity, name)
        if state == "below_level":
            if mode != "unapproved":
                assert before["view"].__class__.__name__ == "StepUp" and before["view"].level == 2, before
            assert not isinstance(before["download"], AllowDataset)
            if mode in ("download", "approved"):
                assert before["download"].__class__.__name__ == "StepUp"
            continue
        for action in ("view", "download"):
            allowed_now = (action == "view" and mode != "unapproved") or mode in ("download", "approved")
            assert isinstance(before[action], AllowDataset) == allowed_now, (mode, state, action, before[action])
        await apply_state(state, services, catalog, store, name, grant["id"], user, identity)
        for action in ("view", "download"):
            decision = before[action]
            ok = expected(mode, state, action)
            cell = (mode, state, action)
            if not isinstance(decision, AllowDataset):
                assert not ok, cell
                continue
            auth = decision.authorization
            if action == "view":
                if ok:
                    result = await access.view(services, auth)
                    assert result.rows and result.rows[0] == ("0", "city0"), cell
                else:
                    await refused(services, access.view(services, auth))
                    if state not in ("over_rows", "over_bytes", "used_up"):
                        await refused(services, access.files(services, auth))
            else:
                if ok:
                    stream, size, sha = await access.download(services, auth)
                    assert await read_all(stream) == CSV and sha == hashlib.sha256(CSV).hexdigest(), cell
                else:
                    await refused(services, access.download(services, auth))
            # What access refused, the policy refuses too now (a stale one may simply be asked again).
            if not ok and state not in ("stale", "new_version"):
                again = await services.policy.authorize_dataset(identity, name, action, services.clock.now())
                assert not isinstance(again, AllowDataset), cell


async def test_quota_refusals_raise_alerts(make_services, store, csv_file):
    services = make_services(publish__rows_per_day=1000, publish__bytes_per_day=10_000)
    catalog = Catalog.from_services(services, actor="tester")
    await store.admin.add_user("alice")
    await catalog.add("ds", csv_file)
    await catalog.publish("ds")
    await catalog.grant("ds", user="alice", mode="download")
    identity = await identity_for(services, "alice")
    view, download = await authorize(services, identity, "ds"), await authorize(services, identity, "ds", "download")
    await set_usage(services, identity.user_id, rows=1000, bytes_=10_000 - len(CSV) + 1)
    await refused(services, access.view(services, view))
    await refused(services, access.download(services, download))
    alerts = await audit_events(services.db, "alert.quota")
    assert [(a.details["limit_kind"], a.outcome, a.details["limit"], a.details["requested"])
            for a in alerts] == [("rows", "refused", 1000, ROWS), ("bytes", "refused", 10_000, len(CSV))]
    assert alerts[0].actor == "alice" and alerts[0].target == "ds"


# --- downloads --------------------------------------------------------------------------------------------


@pytest.fixture
async def world(make_services, store, csv_file):
    services = make_services(publish__rows_per_page=10, publish__rows_per_day=25, publish__bytes_per_day=3 * len(CSV))
    catalog = Catalog.from_services(services, actor="tester")
    for user, groups in (("alice", ["analysts"]), ("bob", ["analysts"]), ("carol", [])):
        await store.admin.add_user(user, roles=["admin"] if user == "carol" else ["user"], groups=groups)
    await catalog.add("ds", csv_file)
    await catalog.publish("ds")
    services.catalog = catalog
    return services


async def test_a_download_counts_once_and_is_audited_with_size_and_sha256(world):
    services, catalog = world, world.catalog
    grant = await catalog.grant("ds", user="alice", mode="download", max_downloads=2)
    alice = await identity_for(services, "alice")
    auth = await authorize(services, alice, "ds", "download")
    assert [f.path for f in await access.files(services, auth)] == ["data.csv"]
    stream, size, sha = await access.download(services, auth, "data.csv")
    assert size == len(CSV) and sha == hashlib.sha256(CSV).hexdigest() == stream.sha256
    assert await stream.read_at(3, 5) == CSV[3:8] and await stream.read_at(len(CSV), 10) == b""
    assert await read_all(stream) == CSV
    [event] = await audit_events(services.db, "dataset.download")
    assert (event.details["size"], event.details["sha256"], event.details["downloads"]) == (len(CSV), sha, 1)
    assert event.details["grant_id"] == grant["id"] and event.actor == "alice" and event.source == "192.0.2.7"
    async with services.db() as db:
        assert (await db.get(DatasetGrant, grant["id"])).downloads == 1
        assert (await db.get(DailyUsage, (alice.user_id, DAY))).bytes_downloaded == len(CSV)
    # The second is the last; the third is refused with nothing counted.
    stream, _, _ = await access.download(services, await authorize(services, alice, "ds", "download"))
    await stream.aclose()
    await refused(services, access.download(services, auth))
    assert not isinstance(await services.policy.authorize_dataset(alice, "ds", "download", services.clock.now()),
                          AllowDataset)
    assert [g["state"] for g in (await catalog.show("ds"))["grants"]] == ["used-up"]


async def test_approval_is_one_time_and_expires(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="download-with-approval")
    alice = await identity_for(services, "alice")
    assert not isinstance(await services.policy.authorize_dataset(alice, "ds", "download", services.clock.now()),
                          AllowDataset)
    first = await catalog.request_download("alice", "ds")
    await catalog.decide(first["id"], True, "ok")
    auth = await authorize(services, alice, "ds", "download")
    assert auth.request_id == first["id"]
    stream, _, _ = await access.download(services, auth)
    await stream.aclose()
    [event] = await audit_events(services.db, "dataset.download")
    assert event.details["request_id"] == first["id"]
    await refused(services, access.download(services, auth))          # the approval is used up
    assert (await catalog.requests())[0]["status"] == "used"
    # A second approval that is not used in time expires.
    second = await catalog.request_download("alice", "ds")
    assert second["new"]
    await catalog.decide(second["id"], True, "ok")
    services.clock.advance(15 * 60 + 1)
    assert not isinstance(await services.policy.authorize_dataset(alice, "ds", "download", services.clock.now()),
                          AllowDataset)
    # Even an authorization that names it (minted from facts that claim it is valid) cannot use it.
    forged = mint(alice, services, "ds", grant_mode="download-with-approval", approved=second["id"])
    await refused(services, access.download(services, await forged))


async def test_a_plain_download_grant_is_used_before_an_approval(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="download-with-approval")
    plain = await catalog.grant("ds", user="alice", mode="download")
    request = await catalog.request_download("alice", "ds")
    await catalog.decide(request["id"], True, "ok")
    auth = await authorize(services, await identity_for(services, "alice"), "ds", "download")
    assert auth.grant_id == plain["id"] and auth.request_id is None


# --- a download of a dataset of several files -------------------------------------------------------------

FOLDER = {"a.csv": CSV, "b.txt": b"second file\n", "sub/c.csv": b"id\n1\n"}


@pytest.fixture
async def folder(world, tmp_path):
    root = tmp_path / "folder"
    for path, data in FOLDER.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    await world.catalog.add("multi", root)
    await world.catalog.publish("multi")
    return root


async def fetch(services, identity, path) -> tuple[bytes, int]:
    """Ask the policy, download `path` of `multi`, read it whole; returns the bytes and the copy it counted in."""
    stream, _, _ = await access.download(services, await authorize(services, identity, "multi", "download"), path)
    data = await read_all(stream)
    [*_, event] = await audit_events(services.db, "dataset.download")
    assert event.details["path"] == path
    return data, event.details["copy_id"]


async def grant_downloads(services, grant_id) -> int:
    async with services.db() as db:
        return (await db.get(DatasetGrant, grant_id)).downloads


async def test_one_counted_download_serves_each_file_of_the_dataset_once(world, folder):
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download", max_downloads=1)
    alice = await identity_for(services, "alice")
    served = {path: await fetch(services, alice, path) for path in FOLDER}
    assert {path: data for path, (data, _) in served.items()} == FOLDER
    assert len({copy_id for _, copy_id in served.values()}) == 1          # one copy, counted once
    assert await grant_downloads(services, grant["id"]) == 1
    assert [e.details["downloads"] for e in await audit_events(services.db, "dataset.download")] == [1, 1, 1]
    # The copy is whole: a file again is a second download, which the grant no longer has.
    auth = await mint(alice, services, "multi", grant_id=grant["id"])
    await refused(services, access.download(services, auth, "a.csv"))
    assert not isinstance(await services.policy.authorize_dataset(alice, "multi", "download", services.clock.now()),
                          AllowDataset)


async def test_a_file_served_twice_counts_a_second_download(world, folder):
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download", max_downloads=2)
    alice = await identity_for(services, "alice")
    _, first = await fetch(services, alice, "a.csv")
    _, second = await fetch(services, alice, "a.csv")
    _, joined = await fetch(services, alice, "b.txt")
    assert first != second and joined == second and await grant_downloads(services, grant["id"]) == 2


async def approved_grant(services, catalog, user="alice"):
    """An approval-gated grant of `multi` to `user`, with one approval given; returns (identity, request)."""
    await catalog.grant("multi", user=user, mode="download-with-approval")
    request = await catalog.request_download(user, "multi")
    await catalog.decide(request["id"], True, "ok")
    return await identity_for(services, user), request


async def test_an_approval_is_one_copy_of_the_whole_dataset(world, folder):
    services, catalog = world, world.catalog
    alice, request = await approved_grant(services, catalog)
    assert (await fetch(services, alice, "sub/c.csv"))[0] == FOLDER["sub/c.csv"]
    assert (await catalog.requests())[0]["status"] == "used"
    # The rest of the copy needs no second approval, and the used approval opens no view.
    assert (await fetch(services, alice, "b.txt"))[0] == FOLDER["b.txt"]
    assert not isinstance(await services.policy.authorize_dataset(alice, "multi", "view", services.clock.now()),
                          AllowDataset)
    auth = await authorize(services, alice, "multi", "download")
    await refused(services, access.download(services, auth, "b.txt"))   # served already: a new approval needed
    assert (await fetch(services, alice, "a.csv"))[0] == CSV
    [copy] = {e.details["copy_id"] for e in await audit_events(services.db, "dataset.download")}
    async with services.db() as db:
        assert (await db.get(DownloadCopy, copy)).request_id == request["id"]


async def test_a_copy_closes_after_download_minutes_and_with_a_new_version(world, folder):
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download", max_downloads=2)
    alice = await identity_for(services, "alice")
    _, first = await fetch(services, alice, "a.csv")
    services.clock.advance(services.config["publish.download_minutes"] * 60)
    # Closed: the policy names it no more, and even an authorization that does counts a new download.
    assert (await authorize(services, alice, "multi", "download")).copy_id is None
    stream, _, _ = await access.download(
        services, _with_copy(await authorize(services, alice, "multi", "download"), first), "b.txt")
    await stream.aclose()
    [*_, event] = await audit_events(services.db, "dataset.download")
    second = event.details["copy_id"]
    assert second != first and await grant_downloads(services, grant["id"]) == 2
    # A new version closes the copy of the old one at once: its files are not the ones the copy counted.
    (folder / "sub" / "c.csv").write_bytes(b"id\n2\n")
    await catalog.update("multi", folder)
    assert not isinstance(await services.policy.authorize_dataset(alice, "multi", "download", services.clock.now()),
                          AllowDataset)
    named = _with_copy(await mint(alice, services, "multi", grant_id=grant["id"]), second)
    await refused(services, access.download(services, named, "sub/c.csv"))


async def test_a_copy_is_joined_only_by_its_own_user_grant_and_version(world, folder):
    services, catalog = world, world.catalog
    shared = await catalog.grant("multi", group="analysts", mode="download", max_downloads=1)
    own = await catalog.grant("multi", user="alice", mode="download-with-approval")  # never approved
    alice, bob = await identity_for(services, "alice"), await identity_for(services, "bob")
    _, copy_id = await fetch(services, alice, "a.csv")
    assert (await authorize(services, alice, "multi", "download")).copy_id == copy_id
    for auth in (await mint(bob, services, "multi", grant_id=shared["id"]),     # the same grant, another user
                 await mint(alice, services, "multi", grant_id=own["id"])):     # the same user, another grant
        await refused(services, access.download(services, _with_copy(auth, copy_id), "b.txt"))
    # Bob's own decision never names Alice's copy, and the grant they share is used up.
    assert not isinstance(await services.policy.authorize_dataset(bob, "multi", "download", services.clock.now()),
                          AllowDataset)


async def test_a_file_the_copy_served_already_goes_to_a_grant_that_can_serve_it(world, folder):
    """The copy outranks other grants only for files it has not served: asked again for one it has, the
    policy picks as for a new download (here an unlimited group grant), not the used-up grant of the copy."""
    services, catalog = world, world.catalog
    limited = await catalog.grant("multi", user="alice", mode="download", max_downloads=1)
    unlimited = await catalog.grant("multi", group="analysts", mode="download")
    alice = await identity_for(services, "alice")

    async def take(path):
        auth = (await services.policy.authorize_dataset(alice, "multi", "download", services.clock.now(), path))\
            .authorization
        stream, _, _ = await access.download(services, auth, path)
        await stream.aclose()
        return auth.grant_id

    first = await take("a.csv")
    assert await take("a.csv") != first                           # the copy cannot serve it twice
    assert {first, await take("b.txt")} == {first}                 # but still takes the files it has not served
    assert {first} <= {limited["id"], unlimited["id"]}
    # Garbage paths never reach the query; they name no copy, and the download refuses them.
    for junk in ("", "/etc/passwd", "a/../b", "x\x00y", "z" * 600):
        decision = await services.policy.authorize_dataset(alice, "multi", "download", services.clock.now(), junk)
        assert isinstance(decision, AllowDataset)
        await refused(services, access.download(services, decision.authorization, junk or None))


async def test_a_joined_file_is_audited_with_the_approval_its_copy_spent(world, folder):
    services, catalog = world, world.catalog
    alice, spent = await approved_grant(services, catalog)
    await fetch(services, alice, "a.csv")
    waiting = await catalog.request_download("alice", "multi")   # a second approval, not needed for the copy
    await catalog.decide(waiting["id"], True, "ok")
    await fetch(services, alice, "b.txt")
    assert [e.details["request_id"] for e in await audit_events(services.db, "dataset.download")] == [spent["id"]] * 2
    assert {r["id"]: r["status"] for r in await catalog.requests()} == {spent["id"]: "used", waiting["id"]: "approved"}


async def test_an_open_copy_still_stops_at_revocation_disabling_and_the_daily_cap(world, folder, store):
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download")
    alice = await identity_for(services, "alice")
    await fetch(services, alice, "b.txt")
    auth = await authorize(services, alice, "multi", "download")
    assert auth.copy_id is not None
    async def bytes_today(value):
        async with services.db() as db, db.begin():
            await db.execute(update(DailyUsage).where(DailyUsage.user_id == alice.user_id)
                             .values(bytes_downloaded=value))

    used = (await snapshot(services))["usage"][0][3]
    await bytes_today(services.config["publish.bytes_per_day"])
    await refused(services, access.download(services, auth, "a.csv"))
    await bytes_today(used)
    await store.admin.set_user_status("alice", "disabled")
    await refused(services, access.download(services, auth, "a.csv"))
    await store.admin.set_user_status("alice", "active")
    await catalog.revoke(grant["id"])
    await refused(services, access.download(services, auth, "a.csv"))


async def test_a_revocation_that_lands_inside_the_counting_transaction_stops_a_join(world, folder, monkeypatch):
    """Revoked after the transaction's own re-read of the grant, before the file is taken: the guarded update
    that locks the grant's row sees it."""
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download")
    alice = await identity_for(services, "alice")
    await fetch(services, alice, "a.csv")
    auth = await authorize(services, alice, "multi", "download")
    original, calls = access._current, []

    async def revoked_right_after(db, authorization, now, same_version=True):
        result = await original(db, authorization, now, same_version)
        calls.append(1)
        if len(calls) == 2:  # the re-read inside the counting transaction
            async with services.db() as other, other.begin():
                await other.execute(update(DatasetGrant).where(DatasetGrant.id == grant["id"])
                                    .values(revoked_at=services.clock.now()))
        return result

    monkeypatch.setattr(access, "_current", revoked_right_after)
    with pytest.raises(Refused):
        await access.download(services, auth, "b.txt")
    assert len(calls) == 2 and len(await audit_events(services.db, "dataset.download")) == 1


def _with_copy(authorization, copy_id):
    """The authorization as the policy would have minted it naming `copy_id` (the facts lie, the mint is real)."""
    facts = DatasetFacts(True, authorization.dataset, True, None, None, 1,
                         [DatasetGrantFacts(authorization.grant_id, "download", None, 0, 0, None, "none", True, False,
                                            None, copy_id)])
    decision = decide_dataset(authorization.identity, facts, "download", authorization.decided_at)
    assert isinstance(decision, AllowDataset) and decision.authorization.copy_id == copy_id
    return decision.authorization


async def test_one_file_taken_twice_at_once_under_a_copy_is_served_once(world, folder):
    services, catalog = world, world.catalog
    grant = await catalog.grant("multi", user="alice", mode="download", max_downloads=1)
    alice = await identity_for(services, "alice")
    await fetch(services, alice, "a.csv")
    auths = [await authorize(services, alice, "multi", "download") for _ in range(4)]
    results = await asyncio.gather(*(access.download(services, a, "b.txt") for a in auths), return_exceptions=True)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 1 and all(isinstance(r, Refused) for r in results if isinstance(r, BaseException))
    for stream, _, _ in served:
        await stream.aclose()
    assert await grant_downloads(services, grant["id"]) == 1
    assert len(await audit_events(services.db, "dataset.download")) == 2


async def mint(identity, services, name, *, grant_id=None, grant_mode="download", approved=None, mask="none",
               action="download", version=None) -> DatasetAuthorization:
    """An authorization minted by the real policy function from facts that need not be true."""
    async with services.db() as db:
        dataset = (await db.execute(select(Dataset).where(Dataset.name == name))).scalar_one()
        if grant_id is None:
            grant_id = (await db.execute(select(DatasetGrant.id).where(DatasetGrant.dataset_id == dataset.id)
                                         .order_by(DatasetGrant.id))).scalars().first()
    facts = DatasetFacts(True, DatasetRef(dataset.id, dataset.name, dataset.classification,
                                          version or dataset.current_version), True, None, None, 1,
                         [DatasetGrantFacts(grant_id, grant_mode, None, None, 0, None, mask, True, False, approved)])
    decision = decide_dataset(identity, facts, action, services.clock.now())
    assert isinstance(decision, AllowDataset)
    return decision.authorization


async def test_authorizations_built_on_false_facts_are_refused(world, csv_file):
    """Each re-check in access holds even when the policy was handed facts that no longer (or never) held."""
    services, catalog = world, world.catalog
    alice, bob = await identity_for(services, "alice"), await identity_for(services, "bob")
    view_grant = await catalog.grant("ds", user="alice", mode="view")
    approval_grant = await catalog.grant("ds", user="alice", mode="download-with-approval")
    shared = await catalog.grant("ds", group="analysts", mode="download-with-approval")
    carols_grant = await catalog.grant("ds", user="carol", mode="download")
    await catalog.add("other", csv_file)
    await catalog.publish("other")
    other_grant = await catalog.grant("other", user="alice", mode="download")
    alices_request = await catalog.request_download("alice", "ds")
    bobs_request = await catalog.request_download("bob", "ds")
    for request in (alices_request, bobs_request):
        await catalog.decide(request["id"], True, "ok")
    ghost = dataclasses.replace(alice, user_id=424242)
    cases = {
        "a view grant used to download": mint(alice, services, "ds", grant_id=view_grant["id"]),
        "no approval for an approval grant": mint(alice, services, "ds", grant_id=approval_grant["id"]),
        "an approval that does not exist": mint(alice, services, "ds", grant_id=approval_grant["id"],
                                                grant_mode="download-with-approval", approved=999_999),
        "someone else's approval under a shared grant": mint(alice, services, "ds", grant_id=shared["id"],
                                                             grant_mode="download-with-approval",
                                                             approved=bobs_request["id"]),
        "an approval under another grant": mint(alice, services, "ds", grant_id=shared["id"],
                                                grant_mode="download-with-approval", approved=alices_request["id"]),
        "a grant of another dataset": mint(alice, services, "ds", grant_id=other_grant["id"]),
        "a grant that does not exist": mint(alice, services, "ds", grant_id=987_654),
        "another user's grant": mint(alice, services, "ds", grant_id=carols_grant["id"]),
        "a masking grant downloading": mint(alice, services, "other", grant_id=other_grant["id"], mask="pii"),
        "an old version": mint(alice, services, "ds", grant_id=view_grant["id"], action="view", version=7),
        "an unknown user": mint(ghost, services, "ds", grant_id=view_grant["id"], action="view"),
    }
    for label, pending in cases.items():
        auth = await pending
        call = access.view(services, auth) if auth.action == "view" else access.download(services, auth)
        error = await refused(services, call)
        assert error.reason, label
    # The real approvals are still there for their owners.
    for identity, request in ((alice, alices_request), (bob, bobs_request)):
        auth = await authorize(services, identity, "ds", "download")
        assert auth.request_id == request["id"]
        stream, _, _ = await access.download(services, auth)
        await stream.aclose()


async def test_hand_made_copied_and_misused_authorizations_are_rejected(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="download")
    alice = await identity_for(services, "alice")
    view, download = await authorize(services, alice, "ds"), await authorize(services, alice, "ds", "download")
    forged = DatasetAuthorization(identity=alice, dataset=view.dataset, action="view", grant_id=view.grant_id,
                                  mask="none", watermark=False, request_id=None, decided_at=services.clock.now())
    copied = dataclasses.replace(view, watermark=False)
    for bad in (forged, copied):
        with pytest.raises(PermissionError):
            await access.view(services, bad)
        with pytest.raises(PermissionError):
            await access.files(services, bad)
    with pytest.raises(PermissionError):
        await access.download(services, dataclasses.replace(download))
    with pytest.raises(PermissionError):
        await access.download(services, view)          # a view authorization never downloads
    with pytest.raises(PermissionError):
        await access.view(services, download)          # and the other way round
    # Decided in the future (a clock that went back) is as stale as decided long ago.
    services.clock.advance(-access.MAX_AUTHORIZATION_AGE.total_seconds() - 1)
    await refused(services, access.view(services, view))
    services.clock.advance(access.MAX_AUTHORIZATION_AGE.total_seconds() + 1)
    assert (await access.view(services, view)).rows


# --- views ------------------------------------------------------------------------------------------------


async def test_view_pages_watermark_and_audit(world):
    services, catalog = world, world.catalog
    grant = await catalog.grant("ds", user="alice", mode="view")
    alice = await identity_for(services, "alice")
    auth = await authorize(services, alice, "ds")
    page = await access.view(services, auth, page=2)
    assert page.kind == "table" and page.rows[0] == ("10", "city10") and page.has_next and page.rows_viewed == 10
    assert page.watermark_text.startswith("alice | 2026-11-28 12:00 UTC | 192.0.2.7 | ")
    assert page.view_id in page.watermark_text and page.watermark_png.startswith(b"\x89PNG")
    [event] = await audit_events(services.db, "dataset.view")
    assert event.details["view_id"] == page.view_id and event.details["rows"] == 10
    assert event.details["grant_id"] == grant["id"] and event.details["watermark"] is True
    with pytest.raises(UsageError):
        await access.view(services, auth, page=0)
    with pytest.raises(UsageError):
        await access.view(services, auth, page=True)
    for path in ("../data.csv", "/data.csv", "data.csv/..", "", "a\0b", "./data.csv", "data.csv\n"):
        assert (await refused(services, access.view(services, auth, path))).reason == "malformed path"
    assert (await refused(services, access.view(services, auth, "nosuch.csv"))).reason == "no such file"


async def test_no_watermark_grant(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="view", watermark=False)
    page = await access.view(services, await authorize(services, await identity_for(services, "alice"), "ds"))
    assert page.watermark_text == "" and page.watermark_png is None


async def test_daily_rows_shorten_a_page_then_refuse_and_alert(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="view")
    alice = await identity_for(services, "alice")
    auth = await authorize(services, alice, "ds")
    assert len((await access.view(services, auth, page=1)).rows) == 10
    assert len((await access.view(services, auth, page=2)).rows) == 10
    short = await access.view(services, auth, page=3)                # 25 per day: 5 left
    assert [r[0] for r in short.rows] == ["20", "21", "22", "23", "24"] and not short.has_next
    assert short.rows_viewed == 5 and "shortened" in short.notice
    [reached] = await audit_events(services.db, "alert.quota")
    assert (reached.outcome, reached.details["used"], reached.details["limit"]) == ("reached", 25, 25)
    await refused(services, access.view(services, auth, page=1))
    assert [a.outcome for a in await audit_events(services.db, "alert.quota")] == ["reached", "refused"]
    assert not isinstance(await services.policy.authorize_dataset(alice, "ds", "view", services.clock.now()),
                          AllowDataset)
    # The next day starts again.
    services.clock.advance(86400)
    assert len((await access.view(services, await authorize(services, alice, "ds"))).rows) == 10


async def rows_today(services, name: str) -> int:
    async with services.db() as db:
        user_id = (await db.execute(select(User.id).where(User.name == name))).scalar_one()
        row = await db.get(DailyUsage, (user_id, DAY))
    return row.rows_viewed if row else 0


async def test_pages_past_the_end_and_failed_renders_still_cost_a_row(world, tmp_path):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="view")
    auth = await authorize(services, await identity_for(services, "alice"), "ds")
    empty = await access.view(services, auth, page=99)
    assert empty.rows == () and empty.rows_viewed == 1 and await rows_today(services, "alice") == 1
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    await catalog.update("ds", broken)
    auth = await authorize(services, await identity_for(services, "alice"), "ds")
    with pytest.raises(RenderError):
        await access.view(services, auth, "broken.png")
    assert await rows_today(services, "alice") == 2


async def test_one_render_at_a_time_per_user(world, monkeypatch):
    services, catalog = world, world.catalog
    await catalog.grant("ds", group="analysts", mode="view")
    started, release = asyncio.Event(), threading.Event()
    real = access._render

    def slow(*args):
        loop.call_soon_threadsafe(started.set)
        release.wait(10)
        return real(*args)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(access, "_render", slow)
    alice_auth = await authorize(services, await identity_for(services, "alice"), "ds")
    first = asyncio.create_task(access.view(services, alice_auth))
    await asyncio.wait_for(started.wait(), 10)
    try:
        with pytest.raises(UsageError, match="still being prepared"):
            await access.view(services, alice_auth, page=2)
        bob = asyncio.create_task(access.view(services, await authorize(services, await identity_for(services, "bob"),
                                                                         "ds")))
        await asyncio.sleep(0.05)
        assert not bob.done()  # another user is not refused; bob waits for a render slot or renders
    finally:
        release.set()
    assert len((await first).rows) == 10 and len((await bob).rows) == 10
    assert len((await access.view(services, alice_auth, page=2)).rows) == 10  # the slot is free again


async def test_daily_bytes_refuse_and_alert(world):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="download")
    alice = await identity_for(services, "alice")
    for _ in range(3):
        stream, _, _ = await access.download(services, await authorize(services, alice, "ds", "download"))
        await stream.aclose()
    assert [a.outcome for a in await audit_events(services.db, "alert.quota")] == ["reached"]
    assert not isinstance(await services.policy.authorize_dataset(alice, "ds", "download", services.clock.now()),
                          AllowDataset)


async def test_a_masking_grant_views_masked_and_never_downloads_or_shows_images(world, tmp_path):
    services, catalog = world, world.catalog
    from PIL import Image
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "people.csv").write_text("name,phone\n张三,13812345678\n", encoding="utf-8")
    Image.new("RGB", (40, 40), "white").save(folder / "photo.png")
    (folder / "blob.bin").write_bytes(b"\x00\x01")
    await catalog.add("mixed", folder)
    await catalog.publish("mixed")
    await catalog.grant("mixed", group="analysts", mode="view", mask="pii")
    alice = await identity_for(services, "alice")
    auth = await authorize(services, alice, "mixed")
    assert auth.mask == "pii"
    await refused(services, access.view(services, auth))              # several files: a path is needed
    table = await access.view(services, auth, "people.csv")
    assert table.rows == (("张*", "138****5678"),) and table.masked_columns == (0, 1)
    image = await access.view(services, auth, "photo.png")
    assert image.kind == "none" and image.image is None and "masking" in image.notice
    other = await access.view(services, auth, "blob.bin")
    assert other.kind == "none" and "no viewer" in other.notice
    assert not isinstance(await services.policy.authorize_dataset(alice, "mixed", "download", services.clock.now()),
                          AllowDataset)
    # Unmasked, the image is rendered and the rows are plain.
    await catalog.grant("mixed", user="bob", mode="view")
    bob_auth = await authorize(services, await identity_for(services, "bob"), "mixed")
    assert (await access.view(services, bob_auth, "photo.png")).image.startswith(b"\x89PNG")
    assert (await access.view(services, bob_auth, "people.csv")).rows == (("张三", "13812345678"),)


async def test_granted_datasets_lists_only_what_is_visible(world, csv_file):
    services, catalog = world, world.catalog
    await catalog.grant("ds", user="alice", mode="download-with-approval")
    for name in ("hidden", "gone", "viewonly"):
        await catalog.add(name, csv_file)
    await catalog.publish("gone")
    await catalog.publish("viewonly")
    await catalog.grant("hidden", user="alice", mode="view")
    revoked = await catalog.grant("gone", user="alice", mode="download")
    await catalog.revoke(revoked["id"])
    await catalog.grant("viewonly", group="analysts", mode="view")
    alice = await identity_for(services, "alice")
    listed = await services.policy.granted_datasets(alice, services.clock.now())
    assert [(d.name, d.download_mode) for d in listed] == [("ds", "download-with-approval"), ("viewonly", None)]
    # listed so the approval can be asked for, but nothing shown or served before it is given
    assert [isinstance(d.view, AllowDataset) for d in listed] == [False, True]
    assert not any(isinstance(d.download, AllowDataset) for d in listed)
    await services.catalog.request_download("alice", "ds")
    carol = await identity_for(services, "carol")
    assert await services.policy.granted_datasets(carol, services.clock.now()) == []


async def test_a_stream_whose_content_does_not_match_its_hash_fails_at_the_end(world):
    from bastion.publish.blobs import BlobStore
    from bastion.publish.errors import BlobError

    sha = hashlib.sha256(CSV).hexdigest()
    good = access.DownloadStream(await BlobStore.from_services(world).open(sha), sha, "data.csv", "d1")
    assert await read_all(good) == CSV
    bad = access.DownloadStream(await BlobStore.from_services(world).open(sha), "0" * 64, "data.csv", "d2")
    with pytest.raises(BlobError, match="does not match its SHA-256"):
        await read_all(bad)


@pytest.mark.parametrize("change", ["unpublish", "disable", "revoke"])
async def test_a_change_landing_while_the_blob_opens_is_caught_before_counting(world, monkeypatch, store, change):
    """The download checks again inside the transaction that counts: a change between the first check and the
    count (here: while the blob is being opened) still refuses, with nothing counted."""
    from bastion.publish.blobs import BlobStore

    services, catalog = world, world.catalog
    grant = await catalog.grant("ds", user="alice", mode="download")
    auth = await authorize(services, await identity_for(services, "alice"), "ds", "download")
    real_open = BlobStore.open

    async def open_while_changing(self, sha256):
        reader = await real_open(self, sha256)
        if change == "unpublish":
            await catalog.unpublish("ds")
        elif change == "disable":
            await store.admin.set_user_status("alice", "disabled")
        else:
            await catalog.revoke(grant["id"])
        return reader

    monkeypatch.setattr(BlobStore, "open", open_while_changing)
    with pytest.raises(Refused):
        await access.download(services, auth)
    async with services.db() as db:
        assert (await db.get(DatasetGrant, grant["id"])).downloads == 0
        assert await db.get(DailyUsage, (auth.identity.user_id, DAY)) is None
    assert await audit_events(services.db, "dataset.download") == []


async def test_concurrent_downloads_never_pass_the_grant_limit(world):
    import asyncio

    services, catalog = world, world.catalog
    grant = await catalog.grant("ds", user="alice", mode="download", max_downloads=2)
    alice = await identity_for(services, "alice")
    auths = [await authorize(services, alice, "ds", "download") for _ in range(6)]
    results = await asyncio.gather(*(access.download(services, a) for a in auths), return_exceptions=True)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 2 and all(isinstance(r, Refused) for r in results if isinstance(r, BaseException))
    for stream, _, _ in served:
        await stream.aclose()
    async with services.db() as db:
        assert (await db.get(DatasetGrant, grant["id"])).downloads == 2
        assert (await db.get(DailyUsage, (alice.user_id, DAY))).bytes_downloaded == 2 * len(CSV)
    assert len(await audit_events(services.db, "dataset.download")) == 2
