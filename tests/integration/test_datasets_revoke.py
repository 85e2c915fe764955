"""A download already open stops when its grant is revoked: over SFTP and in the console, audited."""

from __future__ import annotations

import os
import ssl
import time

import aiohttp
import paramiko

from tests.integration.test_datasets_sftp import dataset, grant, run_catalog
from tests.support.clients import paramiko_client
from tests.support.console import ConsoleClient
from tests.support.recordings import wait_for_audit

SIZE = 48 << 20  # far more than socket buffers hold, so the revoke lands mid-transfer


def test_an_open_sftp_download_stops_when_the_grant_is_revoked(testbed, tmp_path):
    alice = testbed.user(None, key=True, prefix="rv")
    name, _ = dataset(testbed, tmp_path, files={"big.bin": os.urandom(SIZE)})
    grant_id = grant(testbed, name, alice, "download")
    client = paramiko_client(testbed.port, alice, f"{alice.name}#datasets")
    try:
        sftp = client.open_sftp()
        handle = sftp.open(f"/{name}/big.bin", "rb")
        assert len(handle.read(1 << 20)) == 1 << 20  # the download is open and serving
        run_catalog(testbed, "revoke", grant_id)
        served, refused, deadline = 1 << 20, None, time.monotonic() + 20
        while refused is None and time.monotonic() < deadline:
            try:
                served += len(handle.read(256 << 10))
            except (IOError, paramiko.SFTPError) as exc:
                refused = exc
            time.sleep(0.05)
        assert refused is not None and "revoked" in str(refused), refused
        assert served < SIZE
    finally:
        client.close()
    stopped = wait_for_audit(testbed, "dataset.download.stopped", alice.name)
    assert stopped and stopped[0]["details"]["reason"] == "grant revoked or expired"
    assert stopped[0]["details"]["path"] == "big.bin"


async def test_an_open_console_download_is_cut_short_when_the_grant_is_revoked(testbed, tmp_path):
    alice = testbed.user(None, prefix="rc")
    name, _ = dataset(testbed, tmp_path, files={"big.bin": os.urandom(SIZE)})
    grant_id = grant(testbed, name, alice, "download")
    async with ConsoleClient(testbed.port) as console:
        await console.login(alice.name, alice.password)
        received, revoked = 0, False
        try:
            async with console.http.get(f"{console.base}/api/v1/datasets/{name}/download?path=big.bin",
                                        headers={"Sec-Fetch-Site": "same-origin"}) as response:
                assert response.status == 200 and response.content_length == SIZE
                async for piece in response.content.iter_chunked(256 << 10):
                    received += len(piece)
                    if not revoked and received >= 1 << 20:
                        run_catalog(testbed, "revoke", grant_id)
                        revoked = True
                    time.sleep(0.02)  # a slow reader: the server has to re-check before it is done
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ssl.SSLError):
            pass
    assert revoked and received < SIZE
    stopped = wait_for_audit(testbed, "dataset.download.stopped", alice.name)
    assert stopped and stopped[0]["details"]["reason"] == "grant revoked or expired"
