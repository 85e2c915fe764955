"""schemathesis against the console's own OpenAPI document: no 5xx, and no operation that ignores auth."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.datadir import init_data_dir
from tests.support.gateway import Directory, GatewayProcess


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory):
    """A gateway of its own: the fuzzer creates, disables and revokes things at random."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    asyncio.run(init_data_dir(data, listen="127.0.0.1:0"))
    directory = Directory(data)
    admin = directory.admin()
    admin.add_user("fuzzer", roles=["admin", "auditor", "user"], password="correct-horse-fuzzer-battery")
    directory.close()
    gateway = GatewayProcess(data, env={"BASTION_AUTH_RATE_LIMIT_FAILURES": "100000"}).start()
    yield gateway
    gateway.stop()


def token(data_dir: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "bastion", "token", "create", "--user", "fuzzer", "--scope",
                             "me,audit:read,audit:write,admin:read,admin:write", "--ttl", "1h", "--json"],
                            capture_output=True, env={"BASTION_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
                            check=True)
    return json.loads(result.stdout)["token"]


def test_schemathesis_finds_no_server_error_and_no_ignored_auth(fuzz_gateway):
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        pytest.skip("schemathesis is not installed in this venv")
    bearer = token(fuzz_gateway.data_dir)
    result = subprocess.run(
        [str(st), "run", f"https://localhost:{fuzz_gateway.port}/api/v1/openapi.json",
         "--checks", "not_a_server_error,ignored_auth", "--tls-verify", "false",
         "-H", f"Authorization: Bearer {bearer}", "--max-examples", "25", "--request-timeout", "20",
         "--generation-deterministic", "--exclude-path-regex", "terminal|/live$|/logout$"],
        capture_output=True, text=True, timeout=600)
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    tested = re.search(r"Tested:\s+(\d+)", result.stdout)
    assert tested and int(tested.group(1)) >= 20, summary  # the fuzzer really reached the operations
