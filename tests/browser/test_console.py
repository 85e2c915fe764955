"""The console in a real Chromium: login levels, security keys, admin, auditor, web terminal, SSH approval."""

from __future__ import annotations

import asyncio
import re
import threading

import asyncssh
import pyotp

from tests.support.browser import VirtualAuthenticator, login, url, wait_for, watch
from tests.support.clients import paramiko_client, read_until
from tests.support.recordings import wait_for_sessions


async def register_key(page, testbed, label: str = "my key") -> None:
    await page.goto(url(testbed, "/me/security"))
    await page.fill("#register-form input[name=label]", label)
    await page.click("#register-form button[type=submit]")
    await page.wait_for_selector(f"#credentials td:text-is('{label}')")


async def test_login_at_level_1_and_2_without_csp_violations(page, testbed):
    alice = testbed.user("shell", totp=True)
    seen = await watch(page)
    await login(page, testbed, alice)
    assert await page.text_content(".who") == f"{alice.name} \u00b7 level 1"
    assert "web01" in await page.text_content("table")
    await page.click("#logout")
    await page.wait_for_url(re.compile(r"/login"))
    await login(page, testbed, alice, pyotp.TOTP(alice.totp_secret).now(), level=2)
    assert await page.text_content(".who") == f"{alice.name} \u00b7 level 2"
    seen.assert_clean()


async def test_security_key_registration_then_level_3_login_needs_user_verification(page, testbed):
    alice = testbed.user("shell")
    authenticator = await VirtualAuthenticator.attach(page, user_verification=True, user_verified=True)
    await login(page, testbed, alice)
    await register_key(page, testbed, "yubikey")
    assert len(await authenticator.credentials()) == 1
    await page.click("#logout")
    await page.wait_for_url(re.compile(r"/login"))
    # level 3 with user verification: accepted
    await page.goto(url(testbed, "/login?level=3"))
    await page.fill("input[name=username]", alice.name)
    await page.fill("input[name=password]", alice.password)
    await page.click("#password-form button[type=submit]")
    await page.click("#webauthn-button:not([hidden])")
    await page.wait_for_url(url(testbed, "/"))
    assert await page.text_content(".who") == f"{alice.name} \u00b7 level 3"
    await page.click("#logout")
    await page.wait_for_url(re.compile(r"/login"))
    # the same key without user verification cannot reach level 3
    await authenticator.set_user_verified(False)
    await page.goto(url(testbed, "/login?level=3"))
    await page.fill("input[name=username]", alice.name)
    await page.fill("input[name=password]", alice.password)
    await page.click("#password-form button[type=submit]")
    await page.click("#webauthn-button:not([hidden])")
    await page.wait_for_selector("#login-error:not([hidden])")
    assert page.url.endswith("/login?level=3")


async def test_admin_creates_a_user_and_a_grant(page, testbed):
    admin = testbed.user(None, totp=True, roles=("admin",), prefix="ad")
    await login(page, testbed, admin, pyotp.TOTP(admin.totp_secret).now(), level=2, next_path="/admin")
    name = f"made-in-browser-{testbed.backend[:2]}"
    await page.fill("#user-form input[name=name]", name)
    await page.fill("#user-form input[name=password]", "correct-horse-browser-battery")
    await page.click("#user-form button[type=submit]")
    await page.wait_for_selector(f"#users tr[data-user='{name}']")
    await page.fill("#grant-form input[name=user]", name)
    await page.fill("#grant-form input[name=target]", "web01")
    await page.fill("#grant-form input[name=account]", "root")
    await page.click("#grant-form button[type=submit]")
    await page.wait_for_selector(f"#grants td:text-is('user:{name}')")
    grants = [g for g in testbed.admin().list_grants() if g["subject"] == f"user:{name}"]
    assert grants and grants[0]["actions"] == ["exec", "shell"]
    events = testbed.directory.call(lambda s: __import__("bastion.recordings", fromlist=["_"]).list_audit(
        s, "admin.", 200, "test"))
    assert any(e["type"] == "admin.user.add" and e["actor"] == admin.name and e["details"]["after"]["name"] == name
               for e in events)


async def test_admin_changes_and_resets_a_global_policy_setting(page, testbed):
    admin = testbed.user(None, totp=True, roles=("admin",), prefix="ad")
    seen = await watch(page)
    await login(page, testbed, admin, pyotp.TOTP(admin.totp_secret).now(), level=2, next_path="/admin")
    row = "#policy tr[data-setting='console.approval_seconds']"
    try:
        assert await page.text_content(f"{row} td:nth-child(4)") == "default"
        await page.fill(f"{row} input[name=value]", "90")
        await page.click(f"{row} button[type=submit]")
        await page.wait_for_selector(f"{row} td:nth-child(4):text('console ({admin.name})')")
        assert await page.input_value(f"{row} input[name=value]") == "90.0"
        # garbage is refused with the reason, and the value in force stays
        await page.fill(f"{row} input[name=value]", "soon")
        await page.click(f"{row} button[type=submit]")
        await page.wait_for_selector("#admin-error:not([hidden])")
        assert "must be a number" in await page.text_content("#admin-error")
        level = "#policy tr[data-setting='publish.level_confidential']"
        await page.select_option(f"{level} select[name=value]", "3")
        await page.click(f"{level} button[type=submit]")
        await page.wait_for_selector(f"{level} td:nth-child(4):text('console')")
        await page.click(f"{row} button:text('Reset')")
        await page.wait_for_selector(f"{row} td:nth-child(4):text-is('default')")
        assert await page.input_value(f"{row} input[name=value]") == "120.0"
        await page.click(f"{level} button:text('Reset')")
        await page.wait_for_selector(f"{level} td:nth-child(4):text-is('default')")
    finally:
        for name in ("console.approval_seconds", "publish.level_confidential"):
            testbed.directory.call(lambda s, n=name: _forget(s, n))
    # the refused garbage is the one failed request the page may report
    assert seen.console_errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    seen.console.clear()
    seen.assert_clean()


async def _forget(services, name: str) -> None:
    from sqlalchemy import delete

    from bastion.store.models import PolicySetting

    async with services.db() as db, db.begin():
        await db.execute(delete(PolicySetting).where(PolicySetting.name == name))


async def test_user_opens_a_web_terminal_and_auditor_replays_it(page, context, testbed):
    alice = testbed.user("shell")
    seen = await watch(page)
    await login(page, testbed, alice)
    await page.click("a:text('Open terminal')")
    await page.wait_for_selector("#terminal-status:text('connected')")
    await page.keyboard.type("echo BROWSER-$((40+2))\n")
    await wait_for("document.querySelector('#terminal').textContent.includes('BROWSER-42')", page)
    await page.keyboard.type("exit\n")
    await page.wait_for_selector("#terminal-status:text('session ended')")
    seen.assert_clean()
    session = wait_for_sessions(testbed, alice.name)[0]
    auditor = testbed.user(None, totp=True, roles=("auditor",), prefix="au")
    viewer = await context.new_page()
    await context.clear_cookies()
    player_seen = await watch(viewer)
    await login(viewer, testbed, auditor, pyotp.TOTP(auditor.totp_secret).now(), level=2,
                next_path=f"/audit/sessions?user={alice.name}")
    assert session["id"] in await viewer.content()
    await viewer.click(f"tr[data-session='{session['id']}'] a:text('Replay')")
    await viewer.wait_for_selector(".ap-player")
    await viewer.click(".ap-player")  # start playback
    await wait_for("document.querySelector('#player').textContent.includes('BROWSER-42')", viewer)
    player_seen.assert_clean()


async def test_auditor_terminates_a_live_ssh_session_from_the_browser(page, testbed):
    alice = testbed.user("shell")
    client = paramiko_client(testbed.port, alice, f"{alice.name}:web01")
    chan = client.invoke_shell()
    chan.send(b"echo READY\n")
    read_until(chan, b"READY")
    session = wait_for_sessions(testbed, alice.name, ended=False)[0]
    auditor = testbed.user(None, totp=True, roles=("auditor",), prefix="au")
    await login(page, testbed, auditor, pyotp.TOTP(auditor.totp_secret).now(), level=2,
                next_path=f"/audit/sessions?user={alice.name}&status=live")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("leaked customer data")))
    await page.click(f"tr[data-session='{session['id']}'] button.terminate")
    chan.settimeout(10)
    rest = b""
    while not chan.exit_status_ready():
        chunk = chan.recv(4096)
        if not chunk:
            break
        rest += chunk
    rest += chan.recv_stderr(4096)
    client.close()
    assert b"leaked customer data" in rest
    assert "leaked customer data" in wait_for_sessions(testbed, alice.name)[0]["end_reason"] or \
        wait_for_sessions(testbed, alice.name)[0]["end_reason"].startswith("terminated")


async def test_menu_step_up_to_level_3_approved_in_the_browser(page, testbed):
    """From the menu after a password login: the terminal shows a one-time link, the browser approves it."""
    level3 = testbed.target("menu-approve", min_level=3)
    alice = testbed.user("shell", target=level3)
    await VirtualAuthenticator.attach(page, user_verification=True, user_verified=True)
    await login(page, testbed, alice)
    await register_key(page, testbed)
    client = paramiko_client(testbed.port, alice, alice.name)
    try:
        chan = client.invoke_shell(term="xterm")

        await asyncio.to_thread(read_until, chan, b"filter:")
        chan.send(b"\r")
        screen = await asyncio.to_thread(read_until, chan, b"Waiting...")
        link = re.search(rb"https://\S+/approve/[A-Za-z0-9_-]+", screen).group(0).decode()
        await page.goto(link)
        await page.click("#approve-button")
        await page.wait_for_selector("#approved:not([hidden])")
        await asyncio.to_thread(read_until, chan, b"approved")
        chan.send(b"echo MENU-$((1+2))\n")
        await asyncio.to_thread(read_until, chan, b"MENU-3")
        chan.send(b"exit\n")
        await asyncio.to_thread(chan.recv_exit_status)
    finally:
        client.close()
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["level"] == 3 and session["methods"] == ["password", "webauthn-uv"]
    await page.goto(link)  # spent
    assert "not found" in (await page.content()).lower()


async def test_ssh_step_up_to_level_3_approved_in_the_browser(page, testbed):
    level3 = testbed.target("approve", min_level=3)
    alice = testbed.user("exec", target=level3)
    authenticator = await VirtualAuthenticator.attach(page, user_verification=True, user_verified=True)
    await login(page, testbed, alice)
    await register_key(page, testbed)
    links: list[str] = []
    got_link = threading.Event()
    outcome: dict = {}

    class Client(asyncssh.SSHClient):
        def kbdint_auth_requested(self):
            return ""

        def kbdint_challenge_received(self, name, instructions, lang, prompts):
            found = re.search(r"https://\S+/approve/\S+", instructions)
            if found:
                links.append(found.group(0))
                got_link.set()
                return ["" for _ in prompts]
            return None

    async def ssh_login():
        async with asyncssh.connect("127.0.0.1", testbed.port, username=f"{alice.name}:{level3}",
                                    password=alice.password, known_hosts=None, client_keys=None, agent_path=None,
                                    config=None, client_factory=Client,
                                    preferred_auth="password,keyboard-interactive") as conn:
            outcome["stdout"] = (await conn.run("echo APPROVED-LOGIN")).stdout

    thread = threading.Thread(target=lambda: asyncio.run(ssh_login()), daemon=True)
    thread.start()
    assert await asyncio.to_thread(got_link.wait, 30)
    link = links[0].replace("https://localhost:", "https://localhost:")
    await page.goto(link)
    await page.click("#approve-button")
    await page.wait_for_selector("#approved:not([hidden])")
    await asyncio.to_thread(thread.join, 30)
    assert outcome.get("stdout") == "APPROVED-LOGIN\n"
    session = wait_for_sessions(testbed, alice.name)[0]
    assert session["level"] == 3 and session["methods"] == ["password", "webauthn-uv"]
    # the link is spent: opening it again finds nothing
    await page.goto(link)
    assert "not found" in (await page.content()).lower()
    assert len(await authenticator.credentials()) == 1
