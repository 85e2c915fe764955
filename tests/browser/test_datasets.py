"""Datasets in Chromium: the grant mode × channel × state matrix, uploads with progress, masking, approvals."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import insert, select, update

from bastion.publish.catalog import Catalog
from bastion.publish.masking import id_check_char, luhn_valid
from bastion.store.models import DailyUsage, DatasetGrant, User
from tests.support.browser import login, new_context, url, watch

MODES = ("view", "download", "download-with-approval")
STATES = ("published", "unpublished", "expired", "revoked", "over-quota", "below-level")
CSV = b"city,count\nBern,3\nBasel,5\n"
_serial = itertools.count(1)


async def logout(page) -> None:
    await page.goto(url_of(page, "/"))
    await page.click("#logout")
    await page.wait_for_url(re.compile(r"/login"))


def catalog(testbed) -> Catalog:
    return Catalog.from_services(testbed.directory.services, actor="test")


def run(testbed, coro):
    return testbed.directory.run(coro)


def add_csv(testbed, name: str, content: bytes = CSV, publish: bool = True) -> None:
    source = Path(testbed.data_dir).parent / f"{name}.csv"
    source.write_bytes(content)
    run(testbed, catalog(testbed).add(name, source))
    if publish:
        run(testbed, catalog(testbed).publish(name))


def approve(testbed, user: str, name: str) -> None:
    request = run(testbed, catalog(testbed).request_download(user, name))
    run(testbed, catalog(testbed).decide(request["id"], True, "matrix set-up"))


def set_grant(testbed, grant_id: int, **values) -> None:
    async def work(services):
        async with services.db() as db, db.begin():
            await db.execute(update(DatasetGrant).where(DatasetGrant.id == grant_id).values(**values))
    testbed.directory.call(work)


def rows_used_up(testbed, user: str) -> None:
    """Today's rows-viewed counter of `user` at the daily limit (the bulk-view cap)."""
    async def work(services):
        async with services.db() as db, db.begin():
            uid = (await db.execute(select(User.id).where(User.name == user))).scalar_one()
            await db.execute(insert(DailyUsage).values(
                user_id=uid, day=services.clock.now().strftime("%Y-%m-%d"),
                rows_viewed=services.config["publish.rows_per_day"], bytes_downloaded=0))
    testbed.directory.call(work)


def make_cell(testbed, mode: str, state: str, user: str) -> str:
    """One dataset in `state`, granted to `user` with `mode` (an approved request where the mode needs one)."""
    name = f"mx{next(_serial)}-{mode}-{state}"
    add_csv(testbed, name, publish=state != "unpublished")
    grant = run(testbed, catalog(testbed).grant(name, user=user, mode=mode,
                                                min_level=3 if state == "below-level" else None,
                                                max_downloads=1 if state == "over-quota" and mode != "view" else None))
    if mode == "download-with-approval" and state != "unpublished":
        approve(testbed, user, name)  # whatever else holds, the approval is there
    if state == "expired":
        set_grant(testbed, grant["id"], valid_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    elif state == "revoked":
        run(testbed, catalog(testbed).revoke(grant["id"]))
    elif state == "over-quota" and mode != "view":
        set_grant(testbed, grant["id"], downloads=1)  # --max-downloads 1, used
    return name


async def fetch(page, path: str) -> tuple[int, str, dict]:
    response = await page.goto(url_of(page, path))
    headers = {k: v for k, v in (await response.all_headers()).items() if k != "date"}
    return response.status, await response.text(), headers


def url_of(page, path: str) -> str:
    scheme, _, host = page.url.split("/", 3)[:3]
    return f"{scheme}//{host}{path}"


async def download_by_click(page, selector: str) -> bytes:
    async with page.expect_download() as info:
        await page.click(selector)
    download = await info.value
    return Path(await download.path()).read_bytes()


async def test_matrix_mode_channel_state_in_the_console(context, testbed):
    """Every cell of grant mode × (console view, console download) × state, in one browser context."""
    from playwright.async_api import Error as PlaywrightError

    main = testbed.user(None, prefix="mx")
    heavy = testbed.user(None, prefix="mq")  # the over-quota user: today's views used up
    cells = {(mode, state): make_cell(testbed, mode, state, heavy.name if state == "over-quota" else main.name)
             for mode in MODES for state in STATES}
    rows_used_up(testbed, heavy.name)
    page = await context.new_page()
    seen = await watch(page)
    results: dict[tuple[str, str, str], int] = {}
    for person in (main, heavy):
        await login(page, testbed, person, next_path="/datasets")
        mine = {cell: name for cell, name in cells.items() if (cell[1] == "over-quota") == (person is heavy)}
        listed = set(await page.eval_on_selector_all("#datasets tr[data-dataset]",
                                                     "rows => rows.map(r => r.dataset.dataset)"))
        # the list holds what is published and granted now (below level with a step-up hint), nothing else
        assert listed == {name for (mode, state), name in mine.items()
                          if state in ("published", "below-level", "over-quota")}
        for (mode, state), name in mine.items():
            if state == "below-level":
                hint = await page.text_content(f"tr[data-dataset='{name}'] td.view a.step-up")
                assert hint == "Needs level 3: step up"
        _, missing_view, missing_view_headers = (await fetch(page, "/datasets/mx-never-existed/view"))
        _, missing_dl, missing_dl_headers = (await fetch(page, "/datasets/mx-never-existed/download"))
        assert "not found" in missing_view
        for (mode, state), name in sorted(mine.items()):
            # channel: console view
            status, text, headers = await fetch(page, f"/datasets/{name}/view")
            if status == 200:
                assert "<td>Bern</td>" in text and re.search(r'id="view-id">[0-9a-f]{8}<', text)
                assert "content-disposition" not in headers and headers["cache-control"] == "no-store"
            else:
                assert (status, text, headers) == (404, missing_view, missing_view_headers), (mode, state)
            results[(mode, "view", state)] = status
            # channel: console download (from the list's link where there is one, else the address bar)
            await page.goto(url_of(page, "/datasets"))
            link = f"tr[data-dataset='{name}'] td.download a[download]"
            if await page.query_selector(link):
                assert await download_by_click(page, link) == CSV
                results[(mode, "download", state)] = 200
            else:
                # no link: the address bar gets the 404 of a dataset that never existed (or, wrongly, a file)
                try:
                    status, text, headers = await fetch(page, f"/datasets/{name}/download")
                except PlaywrightError as exc:
                    assert "Download is starting" in str(exc)
                    status, text, headers = 200, "", {}
                else:
                    assert (status, text, headers) == (404, missing_dl, missing_dl_headers), (mode, state)
                results[(mode, "download", state)] = status
        await logout(page)
    expected = {(mode, channel, state): 200 if state == "published" and (channel == "view" or mode != "view")
                else 404 for mode in MODES for channel in ("view", "download") for state in STATES}
    assert results == expected
    assert not seen.csp_violations and not seen.csp_messages(), (seen.csp_violations, seen.csp_messages())
    assert not seen.errors


def _resident_id() -> str:
    first = "11010519491231002"
    return first + id_check_char(first)


def _card() -> str:
    base = "622202020011223344"
    return next(base + d for d in "0123456789" if luhn_valid(base + d))


async def test_admin_uploads_with_progress_publishes_grants_and_user_sees_pii_masked(browser, testbed):
    admin = testbed.user(None, totp=True, roles=("admin",), prefix="pa")
    reader = testbed.user(None, prefix="pr")
    ident, card, mobile, mail = _resident_id(), _card(), "13812345678", "zhang.san@example.com"
    header = "row,customer_name,id_number,mobile,card,email,note\n"
    row = f"{{}},Zhang San,{ident},{mobile},{card},{mail},call {mobile} about card {card}\n"
    # a few MiB, so the upload takes several progress events
    content = (header + "".join(row.format(i) for i in range(40_000))).encode()
    name = f"pii-{testbed.backend[:2]}-{next(_serial)}"
    context = await new_context(browser)
    page = await context.new_page()
    seen = await watch(page)
    await login(page, testbed, admin, pyotp.TOTP(admin.totp_secret).now(), level=2, next_path="/admin/datasets")
    await page.fill("#upload-form input[name=name]", name)
    await page.select_option("#upload-form select[name=classification]", "internal")
    await page.fill("#upload-form input[name=description]", "customers <b>not bold</b>")
    await page.set_input_files("#upload-form input[name=file]",
                               files=[{"name": "customers.csv", "mimeType": "text/csv", "buffer": content}])
    await page.click("#upload-form button[type=submit]")
    await page.wait_for_selector("#upload-progress[data-state=done]", timeout=60_000)
    assert int(await page.get_attribute("#upload-progress", "data-events")) >= 1
    assert await page.eval_on_selector("#upload-progress", "p => p.value") == 100
    assert "version 1" in await page.text_content("#upload-result")
    await page.click("#upload-open")
    await page.wait_for_url(url(testbed, f"/admin/datasets/{name}"))  # loaded: its script handles the forms
    await page.click("#publish-form button[type=submit]")
    await page.wait_for_selector("#dataset-state:text-is('published')")
    await page.wait_for_load_state("load")  # the reloaded page's script is in charge of the grant form
    await page.select_option("#grant-form select[name=subject_kind]", "user")
    await page.fill("#grant-form input[name=subject]", reader.name)
    await page.select_option("#grant-form select[name=mode]", "view")
    await page.select_option("#grant-form select[name=mask]", "pii")
    await page.select_option("#grant-form select[name=min_level]", "1")
    await page.click("#grant-form button[type=submit]")
    await page.wait_for_selector(f"#grants td:text-is('user:{reader.name}')")
    shown = run(testbed, catalog(testbed).show(name))
    assert shown["files"][0]["size"] == len(content) and shown["state"] == "published"
    assert [(g["mode"], g["mask"], g["min_level"], g["watermark"]) for g in shown["grants"]] == \
        [("view", "pii", 1, True)]
    seen.assert_clean()
    await context.close()

    context = await new_context(browser)
    page = await context.new_page()
    seen = await watch(page)
    await login(page, testbed, reader, next_path="/datasets")
    # free text the admin typed is shown as text
    assert await page.text_content(f"tr[data-dataset='{name}'] td:nth-child(4)") == "customers <b>not bold</b>"
    await page.click(f"tr[data-dataset='{name}'] td.view a")
    await page.wait_for_selector("#view-table")
    response = await page.goto(page.url)  # the page source exactly as the server sent it
    source = await response.text()
    cells = await page.eval_on_selector_all("#view-table tbody tr:first-child td", "tds => tds.map(t => t.textContent)")
    assert cells[0] == "0" and cells[1] != "Zhang San" and "*" in cells[1]
    assert cells[2] == ident[:3] + "*" * 11 + ident[-4:]  # 110***********002X
    assert re.fullmatch(r"138\*{4}5678", cells[3]) and cells[4].startswith("622*")
    for raw in (ident, card, mobile, mail, "Zhang San"):
        assert raw not in source and raw not in await page.content(), raw
    assert "masked (pii)" in await page.text_content(".view-meta")
    seen.assert_clean()
    await context.close()


async def test_download_approval_end_to_end(browser, testbed):
    reader = testbed.user(None, prefix="ar")
    admin = testbed.user(None, totp=True, roles=("admin",), prefix="aa")
    name = f"appr-{testbed.backend[:2]}-{next(_serial)}"
    add_csv(testbed, name)
    run(testbed, catalog(testbed).grant(name, user=reader.name, mode="download-with-approval"))

    user_context = await new_context(browser)
    user_page = await user_context.new_page()
    await login(user_page, testbed, reader, next_path="/datasets")
    row = f"tr[data-dataset='{name}']"
    assert await user_page.query_selector(f"{row} td.download a[download]") is None
    await user_page.click(f"{row} button.request")
    await user_page.wait_for_selector(f"{row} .request-state:text-is('Waiting for approval')")

    admin_context = await new_context(browser)
    admin_page = await admin_context.new_page()
    admin_seen = await watch(admin_page)
    await login(admin_page, testbed, admin, pyotp.TOTP(admin.totp_secret).now(), level=2,
                next_path="/dataset-requests")
    request_row = admin_page.locator("#requests tr", has_text=name)
    await request_row.locator("input[name=reason]").fill("quarterly audit, ticket 42")
    await request_row.locator("button[value=true]").click()
    await admin_page.wait_for_selector(f"#requests tr:has-text('{name}') td.state:text-is('approved')")
    assert "quarterly audit, ticket 42" in await admin_page.locator("#requests tr", has_text=name).text_content()
    admin_seen.assert_clean()
    await admin_context.close()

    await user_page.goto(url(testbed, "/datasets"))
    assert await download_by_click(user_page, f"{row} td.download a[download]") == CSV
    response = await user_page.goto(url(testbed, f"/datasets/{name}/download"))
    assert response.status == 404  # one time only
    await user_page.goto(url(testbed, "/datasets"))
    assert await user_page.query_selector(f"{row} button.request")  # may ask again
    requests = run(testbed, catalog(testbed).requests())
    mine = [r for r in requests if r["dataset"] == name]
    assert [(r["status"], r["decided_by"], r["reason"]) for r in mine] == \
        [("used", admin.name, "quarterly audit, ticket 42")]
    await user_context.close()


async def test_step_up_from_the_datasets_page(page, testbed):
    reader = testbed.user(None, totp=True, prefix="su")
    name = f"stepup-{testbed.backend[:2]}-{next(_serial)}"
    add_csv(testbed, name)
    run(testbed, catalog(testbed).grant(name, user=reader.name, mode="download", min_level=2))
    seen = await watch(page)
    await login(page, testbed, reader, next_path="/datasets")
    row = f"tr[data-dataset='{name}']"
    assert await page.query_selector(f"{row} td.view a.button") is None
    await page.click(f"{row} td.view a.step-up")
    await page.wait_for_selector("#totp-form:not([hidden])")
    await page.fill("input[name=code]", pyotp.TOTP(reader.totp_secret).now())
    await page.click("#totp-form button[type=submit]")
    await page.wait_for_url(url(testbed, "/datasets"))
    assert await page.text_content(".who") == f"{reader.name} \u00b7 level 2"
    assert await download_by_click(page, f"{row} td.download a[download]") == CSV
    await page.click(f"{row} td.view a.button")
    await page.wait_for_selector("#view-table td:text-is('Bern')")
    seen.assert_clean()


@pytest.fixture(autouse=True)
def _chromium_available(browser):
    """Every test here needs the browser (skipped with its reason where Chromium is missing)."""
