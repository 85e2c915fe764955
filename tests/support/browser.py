"""Debian's Chromium driven by Playwright (async API), a CSP/console watcher, a virtual WebAuthn key."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

CHROMIUM = Path("/usr/bin/chromium")

# Quiet, offline, deterministic: nothing phones home (updates, sync, safe-browsing lists), no QUIC
# probing, no GPU process. --no-sandbox because the tests run as root, where Chromium's sandbox
# refuses to start.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# Playwright's default waits are 30 s; a local page that takes more than this is broken.
TIMEOUT_MS = 10_000


def chromium_missing_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (`make test` installs Debian's chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


@asynccontextmanager
async def launch_browser() -> AsyncIterator[Any]:
    """A headless Chromium; Playwright gives each launch a fresh temporary profile and deletes it after."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # Never Playwright's own browser builds: executable_path is Debian's package.
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                           chromium_sandbox=False, timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Any, **options: Any) -> Any:
    """An isolated context (cookies, storage) that accepts the gateway's self-signed certificate.

    `options` go to Browser.new_context (e.g. client_certificates=[...] for mTLS, base_url=...).
    """
    options.setdefault("ignore_https_errors", True)
    # The CSP is part of what is tested: never let Playwright switch it off.
    options.setdefault("bypass_csp", False)
    context = await browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


# Runs before any page script and is not subject to the page's CSP (it is injected over CDP).
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__bastionCspViolation({directive: e.effectiveDirective, blocked: e.blockedURI,
                                source: e.sourceFile, line: e.lineNumber, sample: e.sample,
                                disposition: e.disposition});
});
"""


@dataclass
class PageWatch:
    """What a page complained about: console messages, uncaught errors and CSP violations."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)
    csp_violations: list[dict] = field(default_factory=list)

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]

    def csp_messages(self) -> list[str]:
        """Chromium's own console lines about CSP ("Refused to ...", "Content Security Policy")."""
        return [text for _, text in self.console if "Content Security Policy" in text or "Refused to" in text]

    async def until(self, predicate: Callable[["PageWatch"], bool], timeout: float = TIMEOUT_MS / 1000) -> None:
        """Wait until `predicate(self)` holds (e.g. an expected violation arrived)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)

    def assert_clean(self) -> None:
        """No CSP violation (event or console line), no console error, no uncaught exception."""
        assert not self.csp_violations, f"CSP violations: {self.csp_violations}"
        assert not self.csp_messages(), f"CSP console messages: {self.csp_messages()}"
        assert not self.errors, f"uncaught page errors: {self.errors}"
        assert not self.console_errors, f"console errors: {self.console_errors}"


async def watch(page: Any) -> PageWatch:
    """Start recording a page's complaints; call before the first goto()."""
    seen = PageWatch()
    page.on("console", lambda msg: seen.console.append((msg.type, msg.text)))
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))

    def violation(report: dict) -> None:
        seen.csp_violations.append(report)

    await page.expose_function("__bastionCspViolation", violation)
    await page.add_init_script(_CSP_LISTENER)
    return seen


class VirtualAuthenticator:
    """A CTAP2 security key inside Chromium (DevTools WebAuthn domain), attached to one page.

    Requests from that page go to this key only: no browser UI, no real device. The page must be
    on a domain name (https://localhost:PORT), since WebAuthn refuses IP-address origins.
    """

    def __init__(self, cdp: Any, authenticator_id: str):
        self._cdp = cdp
        self.id = authenticator_id

    @classmethod
    async def attach(cls, page: Any, *, resident_key: bool = True, user_verification: bool = True,
                     user_verified: bool = True, presence: bool = True,
                     protocol: str = "ctap2", transport: str = "usb") -> "VirtualAuthenticator":
        """Add a virtual key to `page`; `user_verified` is what its PIN/biometric check answers,
        `presence` whether touches happen by themselves (False: every request times out)."""
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("WebAuthn.enable", {"enableUI": False})
        answer = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": protocol, "transport": transport, "hasResidentKey": resident_key,
            "hasUserVerification": user_verification, "isUserVerified": user_verified,
            "automaticPresenceSimulation": presence,
        }})
        return cls(cdp, answer["authenticatorId"])

    async def set_user_verified(self, verified: bool) -> None:
        await self._cdp.send("WebAuthn.setUserVerified", {"authenticatorId": self.id, "isUserVerified": verified})

    async def set_presence(self, automatic: bool) -> None:
        await self._cdp.send("WebAuthn.setAutomaticPresenceSimulation",
                             {"authenticatorId": self.id, "enabled": automatic})

    async def credentials(self) -> list[dict]:
        """The key's credentials: credentialId, isResidentCredential, rpId, privateKey, userHandle,
        signCount (base64 strings as DevTools gives them)."""
        answer = await self._cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})
        return answer["credentials"]

    async def clear_credentials(self) -> None:
        await self._cdp.send("WebAuthn.clearCredentials", {"authenticatorId": self.id})

    async def remove(self) -> None:
        """Unplug the key and end its DevTools session."""
        await self._cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})
        await self._cdp.detach()


_FUNCTION = re.compile(r"\s*(async\s+)?(function\b|\([^)]*\)\s*=>|\w+\s*=>)")


async def wait_for(predicate_js: str, page: Any, timeout_ms: int = TIMEOUT_MS) -> Any:
    """Wait until `predicate_js` is truthy in the page and return its value (JSON).

    Give a function, "() => ...": Playwright polls a bare expression with eval(), which the page's
    CSP refuses (and reports as a violation). A bare expression is wrapped here for that reason.
    """
    if not _FUNCTION.match(predicate_js):
        predicate_js = f"() => ({predicate_js})"
    handle = await page.wait_for_function(predicate_js, timeout=timeout_ms)
    try:
        return await handle.json_value()
    finally:
        await handle.dispose()


def url(testbed: Any, path: str) -> str:
    # WebAuthn needs a host name, not an IP address: the console's relying party is "localhost".
    return f"https://localhost:{testbed.port}{path}"


async def login(page: Any, testbed: Any, person: Any, code: str | None = None, level: int = 1,
                next_path: str = "/") -> None:
    """Password (then TOTP when `code` is given) on the console's login page, until `next_path` shows."""
    from urllib.parse import quote

    await page.goto(url(testbed, f"/login?level={level}&next={quote(next_path, safe='/')}"))
    await page.fill("input[name=username]", person.name)
    await page.fill("input[name=password]", person.password)
    await page.click("#password-form button[type=submit]")
    if code is not None:
        await page.wait_for_selector("#totp-form:not([hidden])")
        await page.fill("input[name=code]", code)
        await page.click("#totp-form button[type=submit]")
    await page.wait_for_url(url(testbed, next_path))
