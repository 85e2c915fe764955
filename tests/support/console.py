"""An HTTPS client for the console on the gateway's port: cookies, CSRF token, JSON calls."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import pyotp


class ConsoleClient:
    """Talks to https://localhost:PORT like the console's own scripts do."""

    def __init__(self, port: int, host: str = "localhost", client_cert: tuple[str, str] | None = None):
        self.base = f"https://{host}:{port}"
        self.origin = self.base
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                          cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> "ConsoleClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def post(self, path: str, body: dict | None = None, csrf: str | None = None, **kw: Any):
        headers = {"Origin": self.origin, "X-CSRF-Token": self.csrf if csrf is None else csrf, **kw.pop("headers", {})}
        async with self.http.post(self.base + path, json=body or {}, headers=headers, allow_redirects=False,
                                  **kw) as response:
            try:
                data = await response.json()
            except (aiohttp.ContentTypeError, ValueError):
                data = {"text": await response.text()}
            if isinstance(data, dict) and data.get("csrf"):
                self.csrf = data["csrf"]
            return response.status, data

    async def get(self, path: str, **kw: Any):
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as response:
            text = await response.text()
            return response.status, text, response.headers

    async def login(self, user: str, password: str, totp_secret: str | None = None, level: int = 1) -> dict:
        status, data = await self.post("/api/v1/login/password", {"username": user, "password": password,
                                                                  "level": level})
        assert status == 200, data
        if data.get("next") == "choose" and totp_secret and "totp" in data["choices"]:
            status, data = await self.post("/api/v1/login/totp", {"code": pyotp.TOTP(totp_secret).now()})
            assert status == 200, data
        return data

    def cookie(self) -> str:
        for cookie in self.http.cookie_jar:
            if cookie.key == "__Host-bastion":
                return cookie.value
        return ""
