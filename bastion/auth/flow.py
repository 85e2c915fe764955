"""One connection's way through authentication, independent of the protocol that carries it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import AuthFailure, AuthSuccess
from bastion.audit.log import AuditLog
from bastion.auth.identity import Identity
from bastion.auth.passwords import verify_password
from bastion.clock import Clock
from bastion.store.models import Credential, User


@dataclass(frozen=True)
class UserFacts:
    """What authentication needs to know about a user, loaded once per attempt."""

    id: int
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    active: bool
    password_hash: str | None
    key_fingerprints: frozenset[str] = field(default_factory=frozenset)


class Authenticator:
    """Checks factors against the store and audits every attempt (never the secret)."""

    def __init__(self, sessionmaker: async_sessionmaker, audit: AuditLog, clock: Clock):
        self._sessionmaker = sessionmaker
        self.audit = audit
        self.clock = clock

    async def load(self, name: str) -> UserFacts | None:
        async with self._sessionmaker() as db:
            user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
            if user is None:
                return None
            creds = (await db.execute(select(Credential).where(Credential.user_id == user.id))).scalars().all()
        password = next((c.public for c in creds if c.kind == "password"), None)
        keys = frozenset(c.fingerprint for c in creds if c.kind == "ssh_key")
        return UserFacts(user.id, user.name, tuple(user.roles or ()), tuple(user.groups or ()),
                         user.status == "active", password, keys)

    async def touch_key(self, user_id: int, fingerprint: str) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(Credential)
                             .where(Credential.user_id == user_id, Credential.fingerprint == fingerprint)
                             .values(last_used_at=self.clock.now()))


class AuthFlow:
    """Collects factors for one login name from one source until an identity is proven."""

    def __init__(self, authenticator: Authenticator, source_addr: str, source_port: int = 0):
        self._auth = authenticator
        self.source_addr = source_addr
        self.source_port = source_port
        self.login_name = ""
        self.user: UserFacts | None = None
        self.identity: Identity | None = None
        self._reported_keys: set[str] = set()

    async def start(self, login_name: str) -> None:
        self.login_name = login_name
        self.user = await self._auth.load(login_name)

    def _usable(self) -> UserFacts | None:
        # Disabled users get exactly the answer unknown users get.
        return self.user if self.user is not None and self.user.active else None

    async def _fail(self, method: str, reason: str) -> None:
        await self._auth.audit.emit(AuthFailure(actor=self.login_name[:128], source=self.source_addr,
                                                method=method, reason=reason))

    def _reason_unusable(self) -> str:
        return "unknown user" if self.user is None else "user disabled"

    async def password(self, password: str) -> Identity | None:
        """Verify a password; on success the connection has a level-1 identity."""
        user = self._usable()
        ok = verify_password(user.password_hash if user else None, password)
        if not ok or user is None:
            await self._fail("password", "wrong password" if user else self._reason_unusable())
            return None
        return self._proven(user, "password")

    async def public_key_acceptable(self, fingerprint: str) -> bool:
        """Is this key registered to the user? (The protocol layer checks the signature.)"""
        user = self._usable()
        if user is not None and fingerprint in user.key_fingerprints:
            return True
        if fingerprint not in self._reported_keys:
            self._reported_keys.add(fingerprint)
            await self._fail("publickey", "key not registered" if user else self._reason_unusable())
        return False

    async def public_key_verified(self, fingerprint: str) -> Identity:
        """The protocol layer verified a signature made by an acceptable key."""
        user = self._usable()
        assert user is not None and fingerprint in user.key_fingerprints
        await self._auth.touch_key(user.id, fingerprint)
        return self._proven(user, "publickey")

    def _proven(self, user: UserFacts, method: str) -> Identity:
        base = self.identity or Identity(user.id, user.name, user.roles, user.groups, 0, (), self.source_addr,
                                         self.source_port)
        self.identity = base.with_factor(method, 1)
        return self.identity

    async def succeeded(self, target: str = "") -> None:
        assert self.identity is not None
        await self._auth.audit.emit(AuthSuccess(actor=self.identity.name, source=self.source_addr, target=target,
                                                method=self.identity.methods[-1], level=self.identity.level,
                                                methods=self.identity.methods))

    async def refused_after_credentials(self, method: str, reason: str, target: str = "") -> None:
        """Credentials were right but the request is not allowed (does not count towards lockout)."""
        await self._auth.audit.emit(AuthFailure(actor=self.login_name[:128], source=self.source_addr,
                                                target=target[:128], method=method, reason=reason))
