"""Assembles a running gateway: services, front-ends and the single-port listener."""

from __future__ import annotations

import asyncio
import functools
import logging

from bastion.audit.anchor import anchor_loop
from bastion.audit.syslog import SyslogForwarder
from bastion.config import Config
from bastion.retention import retention_loop
from bastion.search.index import index_later, schedule_pending, stop_indexing
from bastion.console.app import ConsoleServer, create_app
from bastion.pki import ensure_device_ca
from bastion.tlsconfig import server_context
from bastion.listener import Listener
from bastion.services import Services
from bastion.ssh.frontend import SSHFrontEnd

log = logging.getLogger("bastion")
SHUTDOWN_GRACE = 5.0


class Gateway:
    """Start and stop everything that serves the port."""

    def __init__(self, services: Services):
        self.services = services
        self.syslog: SyslogForwarder | None = None
        self.loops: list[asyncio.Task] = []
        self.ssh = SSHFrontEnd(services)
        config = services.config
        ensure_device_ca(config.keys_dir)  # mTLS: device certificates are optional at the TLS level
        self.console = ConsoleServer(config, ssl_context=server_context(config.keys_dir, client_ca=True),
                                     app=create_app(config, services))
        self.listener = Listener(services.config, self.ssh.handle, self.console.handle)

    async def start(self) -> tuple[str, int]:
        await self.services.recordings.start()  # the sealer process, before any session needs it
        sealed = await self.services.recordings.seal_abandoned()
        if sealed:
            log.warning("sealed %d recording(s) left open by an earlier crash as truncated", sealed)
        # Seek points for replay once a session has ended, one at a time (terminal emulation is CPU work).
        keyframe_slots = asyncio.Semaphore(1)

        async def keyframes_after(session_id: str) -> None:
            from bastion.recordings import build_keyframes

            async with keyframe_slots:
                await build_keyframes(self.services, session_id)

        self.services.sessions.after_end.append(keyframes_after)
        # The search index of a session is built once it has ended (and caught up for earlier ones).
        self.services.sessions.after_end.append(functools.partial(index_later, self.services))
        schedule_pending(self.services)
        await self.console.start()
        address = await self.listener.start()
        config = self.services.config
        # Audit events go to syslog too when configured; the chain head is anchored outside the database;
        # expired recordings are crypto-shredded.
        self.syslog = SyslogForwarder.from_config(config)
        if self.syslog is not None:
            self.syslog.attach(self.services.audit)
            await self.syslog.start()
        loop = asyncio.get_running_loop()
        self.loops = [loop.create_task(anchor_loop(self.services, syslog=self.syslog)),
                      loop.create_task(retention_loop(self.services)),
                      loop.create_task(self.services.global_policy.refresh_loop())]
        self.services.public_url = config["console.public_url"] or f"https://{config['console.rp_id']}:{address[1]}"
        self.services.sessions.start_rechecks()
        return address

    async def stop(self) -> None:
        await self.listener.close()
        for live in self.services.sessions.live():
            live.terminate("the gateway is shutting down")
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while self.services.sessions.busy() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for task in self.loops:
            task.cancel()
        for task in self.loops:
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
            except Exception:
                log.exception("background task failed")
        if self.syslog is not None:
            await self.syslog.stop()
        await stop_indexing(self.services)
        await self.console.close()
        await self.services.close()


async def serve(config: Config, ready: "asyncio.Future[tuple[str, int]] | None" = None,
                stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or forever)."""
    services = await Services.open(config)
    gateway = Gateway(services)
    try:
        address = await gateway.start()
    except BaseException:
        await services.close()
        raise
    if ready is not None:
        ready.set_result(address)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await asyncio.shield(gateway.stop())
