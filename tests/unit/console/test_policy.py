"""Global policy API: a reset that would lock the admin making it out is refused like a change would be."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from bastion.config import load_config
from bastion.console.app import create_app
from bastion.console.render import SESSIONS
from bastion.console.websession import COOKIE
from bastion.datadir import init_data_dir
from bastion.services import Services
from bastion.store.models import AuditEvent, User


async def test_a_reset_back_to_a_level_above_the_admins_session_is_refused(database_url, tmp_path):
    data = tmp_path / "data"
    await init_data_dir(data, listen="127.0.0.1:0", database_url=database_url)
    # bastion.toml (here: the environment) demands level 3 for console logins
    services = await Services.open(load_config(data, environ={"BASTION_CONSOLE_LOGIN_LEVEL": "3"}))
    await services.admin(actor="test").add_user("adam", roles=["admin"], password="correct-horse-adam-battery")
    async with services.db() as db:
        adam = (await db.execute(select(User).where(User.name == "adam"))).scalar_one().id
    app = create_app(services.config, services)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        token, session = await app[SESSIONS].create(adam, ["password", "totp"], 2, True, "127.0.0.1")
        client.session.cookie_jar.update_cookies({COOKIE: token})
        headers = {"Origin": f"https://{client.server.host}:{client.server.port}", "X-CSRF-Token": session.csrf_token}
        url = "/api/v1/admin/policy/console.login_level"
        response = await client.post(url, json={"value": 1}, headers=headers)  # lowering is always possible
        assert response.status == 200 and (await response.json())["value"] == 1
        response = await client.post(url + "/reset", json={}, headers=headers)
        assert response.status == 409 and "step up to level 3" in (await response.json())["error"]
        assert services.config["console.login_level"] == 1
        async with services.db() as db:
            types = [e.type for e in (await db.execute(select(AuditEvent).where(
                AuditEvent.type.startswith("admin.policy")))).scalars()]
        assert types == ["admin.policy.set"]
        listing = await client.get("/api/v1/admin/policy", headers=headers)
        row = {r["name"]: r for r in json.loads(await listing.text())}["console.login_level"]
        assert (row["value"], row["origin"], row["file_value"]) == (1, "console", 3)
    finally:
        await client.close()
        await services.close()
