"""Pages from Jinja2 templates (autoescaped, always) and the application's shared objects."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"

SERVICES = web.AppKey("bastion_services", object)
class PeerTable:
    """The real peer (PROXY v2 address) of each console connection, by transport.

    A plain dict, pruned of closed transports as it grows: uvloop transports take no weak references.
    """

    def __init__(self) -> None:
        self._peers: dict[Any, Any] = {}
        self._prune_at = 64

    def add(self, transport: Any, peer: Any) -> None:
        self._peers[transport] = peer
        if len(self._peers) >= self._prune_at:
            self._peers = {t: p for t, p in self._peers.items() if not t.is_closing()}
            self._prune_at = max(64, 2 * len(self._peers))

    def get(self, transport: Any) -> Any:
        return self._peers.get(transport)

    def __len__(self) -> int:
        return len(self._peers)


PEERS = web.AppKey("bastion_peers", PeerTable)
SESSIONS = web.AppKey("bastion_sessions", object)
TOKENS = web.AppKey("bastion_tokens", object)
JINJA = web.AppKey("bastion_jinja", jinja2.Environment)
WEBAUTHN = web.AppKey("bastion_webauthn", object)


def environment(templates: Path) -> jinja2.Environment:
    # Autoescape everything: names, labels, titles and audit details are user-controlled.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


BASE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Relaxations a few pages need, and nothing more:
#  terminal: xterm.js creates <style> elements (they get a per-response nonce through style-nonce.js)
#            and sets style attributes on cells; no script is relaxed.
#  view:     a rendered dataset page needs no script, no connection and no form: only our stylesheet,
#            one nonce'd <style> carrying the watermark tile, and data: images (the tile, a rendered image).
#            Nothing of the page can be fetched again (no image or script URL to replay).
#  player:   asciinema-player runs its terminal emulator as WebAssembly ('wasm-unsafe-eval' allows
#            WebAssembly compilation only, not JavaScript eval).
EXTRA_CSP = {
    "terminal": lambda nonce: BASE_CSP.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")
    + "; style-src-attr 'unsafe-inline'",
    "view": lambda nonce: (f"default-src 'none'; script-src 'none'; style-src 'self' 'nonce-{nonce}'; "
                           "img-src data:; connect-src 'none'; font-src 'none'; form-action 'none'; "
                           "frame-ancestors 'none'; base-uri 'none'"),
    "player": lambda nonce: BASE_CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"),
}


def page(request: web.Request, template: str, status: int = 200, csp: str = "", **context: Any) -> web.Response:
    from bastion.console.context import CALLER_KEY

    caller = request.get(CALLER_KEY)
    nonce = secrets.token_urlsafe(16)
    base = {"caller": caller, "user": caller.user if caller else None,
            "csrf": caller.session.csrf_token if caller and caller.session else "",
            "level": caller.level if caller else 0, "path": request.path, "nonce": nonce}
    body = request.app[JINJA].get_template(template).render(**base, **context)
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = EXTRA_CSP[csp](nonce) if csp else BASE_CSP
    return response
