"""The browser kit works: vendored xterm.js and asciinema-player under CSP, a virtual WebAuthn key."""

from __future__ import annotations

import contextlib
import json
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from bastion.keys import create_tls_material
from bastion.tlsconfig import server_context
from tests.support.browser import VirtualAuthenticator, wait_for, watch

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "web" / "static" / "vendor"
STATIC = Path(__file__).parent / "static"

_BASE = "default-src 'none'; connect-src 'self'; img-src 'self'; font-src 'self'; "
# The policy a console would like; the bundles cannot live with it (see test_strict_csp_blocks_...).
STRICT_CSP = _BASE + "script-src 'self'; style-src 'self'"
# The least the bundles need: WebAssembly compilation for the player's terminal emulator, and
# inline styles for xterm.js's DOM renderer (<style> elements, and style attributes for 24-bit colour).
CONSOLE_CSP = _BASE + "script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'"
# The same without 'unsafe-inline' for <style>: a nonce that static/nonce-shim.js puts on the
# <style> elements xterm.js creates; style attributes still need 'unsafe-inline'.
NONCE_CSP = (_BASE + "script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'nonce-{nonce}'; "
             "style-src-attr 'unsafe-inline'")

READY = "() => window.infra && infra.xterm && infra.player && (!location.hash || infra.webauthn) && infra"
# The player paints the last frame after its "ended" event.
PLAYER_DONE = "() => document.querySelector('#player .ap-term-text')?.textContent.includes('second line')"

CAST = "\n".join(json.dumps(line) for line in [
    {"version": 2, "width": 60, "height": 6},
    [0.05, "o", "hello from cast\r\n"],
    [0.25, "o", "\x1b[38;2;255;128;0msecond line\x1b[0m\r\n"],
]) + "\n"


@asynccontextmanager
async def serve(tmp_path: Path, csp: str):
    """The infra page over TLS on loopback, every response under `csp`; yields its base URL.

    A `{nonce}` in `csp` gets a fresh nonce per page, and the page then loads the nonce shim.
    """
    if not (VENDOR / "xterm.js").exists():
        pytest.skip("web/static/vendor/ is empty: run `make assets`")
    create_tls_material(tmp_path)

    async def page(request: web.Request) -> web.StreamResponse:
        html = (STATIC / "infra.html").read_text()
        response = web.Response(content_type="text/html")
        if "{nonce}" in csp:
            nonce = secrets.token_urlsafe(18)
            html = html.replace("<!--nonce-shim-->", f'<script src="/static/nonce-shim.js" nonce="{nonce}"></script>')
            response.headers["Content-Security-Policy"] = csp.format(nonce=nonce)
        response.text = html
        return response

    async def cast(request: web.Request) -> web.StreamResponse:
        return web.Response(text=CAST, content_type="application/x-asciicast")

    async def script(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / request.match_info["name"])

    async def favicon(request: web.Request) -> web.StreamResponse:
        # Chromium asks for it on every page; a 404 would show up as a console error.
        return web.Response(status=204)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        # The page set its own (with the nonce it used); other responses get any valid one.
        response.headers.setdefault("Content-Security-Policy", csp.format(nonce=secrets.token_urlsafe(18)))
        response.headers["X-Content-Type-Options"] = "nosniff"

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/demo.cast", cast)
    app.router.add_get("/static/{name:infra.js|nonce-shim.js}", script)
    app.router.add_static("/static/vendor/", VENDOR)
    app.on_response_prepare.append(headers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tmp_path))
    await site.start()
    try:
        # A name, not 127.0.0.1: WebAuthn refuses IP-address origins. The certificate names localhost.
        yield f"https://localhost:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _assert_bundles_worked(page, results: dict) -> None:
    assert results["xterm"]["ok"], results["xterm"]
    assert results["xterm"]["value"]["buffer"] == "hello from xterm truecolor"
    assert "hello from xterm truecolor" in results["xterm"]["value"]["rendered"]
    assert results["xterm"]["value"]["proposed"]  # the fit addon measured the renderer
    assert results["player"]["ok"], results["player"]
    assert results["player"]["value"]["duration"] == pytest.approx(0.25)
    await wait_for(PLAYER_DONE, page)
    text = await page.text_content("#player .ap-term-text")
    assert "hello from cast" in text and "second line" in text


@pytest.mark.parametrize("csp", [CONSOLE_CSP, NONCE_CSP], ids=["unsafe-inline-styles", "nonce-styles"])
async def test_bundles_and_webauthn_without_csp_violations(tmp_path, page, csp):
    async with serve(tmp_path, csp) as base:
        seen = await watch(page)
        key = await VirtualAuthenticator.attach(page)
        await page.goto(base + "/#webauthn")
        results = await wait_for(READY, page)

        await _assert_bundles_worked(page, results)
        assert results["webauthn"]["ok"], results["webauthn"]
        created, asserted = results["webauthn"]["value"]["created"], results["webauthn"]["value"]["asserted"]
        assert created["flags"] == {"up": True, "uv": True, "signCount": 1}
        assert asserted["matches"] and asserted["flags"] == {"up": True, "uv": True, "signCount": 2}
        [credential] = await key.credentials()
        assert credential["rpId"] == "localhost" and credential["isResidentCredential"]
        assert credential["signCount"] == 2
        seen.assert_clean()


STRICT_CSP_BLOCKS = {
    ("script-src", "wasm-eval", "asciinema-player.min.js"),
    ("style-src-elem", "inline", "xterm.js"),
    ("style-src-attr", "inline", "xterm.js"),  # 24-bit colour cells get style="color: …"
}


def _blocked(seen) -> set[tuple[str, str, str]]:
    return {(v["directive"], v["blocked"], v["source"].rsplit("/", 1)[-1]) for v in seen.csp_violations}


async def test_strict_csp_blocks_exactly_wasm_and_inline_styles(tmp_path, page):
    async with serve(tmp_path, STRICT_CSP) as base:
        seen = await watch(page)
        await page.goto(base + "/")
        results = await wait_for("() => window.infra && infra.xterm && infra", page)
        # The player's terminal emulator is WebAssembly; without 'wasm-unsafe-eval' it never starts.
        await seen.until(lambda seen: any("WebAssembly" in error for error in seen.errors))
        assert "hello from cast" not in await page.text_content("#player")
        with contextlib.suppress(TimeoutError):  # violation reports are queued tasks: let them land
            await seen.until(lambda seen: _blocked(seen) >= STRICT_CSP_BLOCKS, timeout=5)

    # xterm.js parses and fills its rows, but the <style> elements carrying its theme and cell
    # metrics are refused: the text is there, invisible (default black on black).
    assert results["xterm"]["ok"] and results["xterm"]["value"]["buffer"] == "hello from xterm truecolor"
    assert _blocked(seen) == STRICT_CSP_BLOCKS


async def test_user_verification_required_fails_when_the_key_cannot_verify(tmp_path, page):
    async with serve(tmp_path, CONSOLE_CSP) as base:
        key = await VirtualAuthenticator.attach(page)
        await page.goto(base + "/#webauthn")
        results = await wait_for(READY, page)
        credential_id = results["webauthn"]["value"]["created"]["id"]

        await key.set_user_verified(False)
        attempt = "([id, uv]) => infraAuthenticate(id, uv)"
        required = await page.evaluate(attempt, [credential_id, "required"])
        preferred = await page.evaluate(attempt, [credential_id, "preferred"])
        discouraged = await page.evaluate(attempt, [credential_id, "discouraged"])
        await key.set_user_verified(True)
        again = await page.evaluate(attempt, [credential_id, "required"])
        [stored] = await key.credentials()
        await key.remove()

    # A key that has user verification but fails it (a wrong PIN, an unknown finger) makes Chromium
    # refuse the request outright, for "preferred" too; the page learns only NotAllowedError, as
    # for a cancelled request. Only "discouraged" gets a signature, with presence alone (UV=0):
    # so the server, not the page's request options, must insist on the UV flag.
    for refused in (required, preferred):
        assert not refused["ok"] and refused["error"].startswith("NotAllowedError"), refused
    assert discouraged["ok"] and discouraged["value"]["flags"]["up"] and not discouraged["value"]["flags"]["uv"]
    assert again["ok"] and again["value"]["flags"]["uv"]
    # Refused attempts signed nothing: counts are 1 (create), 2 (get), 3 (discouraged), 4 (again).
    assert discouraged["value"]["flags"]["signCount"] == 3
    assert again["value"]["flags"]["signCount"] == stored["signCount"] == 4


async def test_webauthn_refuses_an_ip_address_origin(tmp_path, page):
    async with serve(tmp_path, CONSOLE_CSP) as base:
        await VirtualAuthenticator.attach(page)
        await page.goto(base.replace("//localhost:", "//127.0.0.1:") + "/#webauthn")
        results = await wait_for(READY, page)
    # So the console must be reached by name (https://localhost:8022 in the demo), never by IP.
    assert results["webauthn"] == {"ok": False, "error": "SecurityError: This is an invalid domain."}
