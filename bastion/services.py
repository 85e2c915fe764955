"""The container handed to front-ends: store, vault, policy, audit, recorder, sessions, clock."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bastion.enrolment import Enrolment
from bastion.approvals import Approvals
from bastion.audit.log import AuditLog
from bastion.auth.devices import DeviceDirectory
from bastion.auth.flow import Authenticator
from bastion.auth.lockout import Lockout
from bastion.auth.ratelimit import SourceRateLimit
from bastion.clock import Clock
from bastion.config import Config
from bastion.globalpolicy import GlobalPolicy
from bastion.keys import load_node_key
from bastion.policy import Policy
from bastion.recorder.sealer_client import SealerProcess
from bastion.recorder.store import RecordingStore
from bastion.sessions.quiet import QuietGate
from bastion.sessions.registry import SessionRegistry
from bastion.sessions.upstream import UpstreamConnector
from bastion.store.engine import make_engine, make_sessionmaker
from bastion.store.migrate import upgrade
from bastion.vault import Vault

log = logging.getLogger("bastion")


@dataclass
class Services:
    config: Config
    clock: Clock
    engine: AsyncEngine
    db: async_sessionmaker
    vault: Vault
    audit: AuditLog
    policy: Policy
    authenticator: Authenticator
    recordings: RecordingStore
    sessions: SessionRegistry
    upstream: UpstreamConnector
    executor: ThreadPoolExecutor
    approvals: Approvals
    global_policy: GlobalPolicy
    # Where browsers reach the console (set by the gateway once its port is known): approval links use it.
    public_url: str = ""
    # Post-session jobs (keyframes, search index) wait on it while live sessions move bulk data.
    quiet: QuietGate = field(default_factory=lambda: QuietGate(tuple))

    @classmethod
    async def open(cls, config: Config, clock: Clock | None = None, migrate: bool = True,
                   load_policy: bool = True) -> "Services":
        clock = clock or Clock()
        vault = Vault.load(config.keys_dir)
        node_key = load_node_key(config.keys_dir)
        engine = make_engine(config.database_url)
        try:
            if migrate:
                await upgrade(engine)
            db = make_sessionmaker(engine)
            audit = AuditLog(db, config.node_name, clock)
            global_policy = GlobalPolicy(config, db, audit, clock)
            if load_policy:
                await global_policy.load()
            # From here on every component reads the overlaid config, so runtime policy changes apply live.
            config = global_policy.config
            policy = Policy(db, config)
            executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bastion-rec")
            sealer = SealerProcess(config.keys_dir, lambda: config["recording.flush_interval"])
            recordings = RecordingStore(config, vault, node_key, db, clock, executor=executor, sealer=sealer)
            sessions = SessionRegistry(db, audit, policy, recordings, clock, config.node_name, config)
            authenticator = Authenticator(
                db, audit, clock, vault,
                Lockout(db, clock, config), SourceRateLimit(config, clock.monotonic),
                DeviceDirectory(db, clock))
            approvals = Approvals(db, clock, config)
            return cls(config, clock, engine, db, vault, audit, policy, authenticator, recordings,
                       sessions, UpstreamConnector(config, db, vault, audit), executor, approvals, global_policy,
                       quiet=QuietGate(sessions.live))
        except BaseException:
            await engine.dispose()
            raise

    def admin(self, actor: str = "cli", source: str = "local") -> Enrolment:
        """Administration (users, targets, grants) and enrolment (TOTP, devices), as `actor`."""
        return Enrolment(self.db, self.vault, self.audit, self.clock, actor=actor, source=source)

    async def close(self) -> None:
        await self.sessions.stop()
        self.authenticator.close()
        await self.recordings.stop()
        self.executor.shutdown(wait=True)
        await self.engine.dispose()
