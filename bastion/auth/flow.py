"""One connection's way through authentication, factor by factor, independent of the protocol."""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import AuthFailure, AuthLockout, AuthPartial, AuthSuccess
from bastion.audit.log import AuditLog
from bastion.auth import levels, totp
from bastion.auth.devices import DeviceDirectory, DeviceFacts, DeviceMatch, match_key, match_mac
from bastion.auth.identity import Identity
from bastion.auth.lockout import Lockout
from bastion.auth.passwords import verify_password
from bastion.auth.ratelimit import SourceRateLimit
from bastion.auth.skkeys import SkAssertion
from bastion.clock import Clock
from bastion.store.models import Credential, User
from bastion.vault import Vault

HASH_THREADS = 2
KEY_ORDINARY = "ssh_key"
KEY_SK = "sk_key"


class Verdict(enum.Enum):
    ACCEPTED = "accepted"   # the factor is proven (the login may still need more)
    WRONG = "wrong"         # a wrong secret: counts towards lockout and the source's rate limit
    REFUSED = "refused"     # not checked or not usable: locked, rate limited, unknown, not needed now


def totp_context(user_id: int) -> str:
    return f"totp:{user_id}"


@dataclass(frozen=True)
class UserFacts:
    """What authentication needs to know about a user, loaded once per connection."""

    id: int
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    active: bool
    locked_until: object
    password_hash: str | None
    keys: dict[str, tuple[int, str]] = field(default_factory=dict)   # fingerprint -> (credential id, kind)
    totp_id: int | None = None
    devices: tuple[DeviceFacts, ...] = ()
    webauthn_ids: tuple[int, ...] = ()

    @property
    def has_totp(self) -> bool:
        return self.totp_id is not None

    def sk_fingerprints(self) -> set[str]:
        return {fp for fp, (_, kind) in self.keys.items() if kind == KEY_SK}


class Authenticator:
    """The factor checks and their bookkeeping, shared by every front-end."""

    def __init__(self, sessionmaker: async_sessionmaker, audit: AuditLog, clock: Clock, vault: Vault,
                 lockout: Lockout, rate_limit: SourceRateLimit, devices: DeviceDirectory):
        self._sessionmaker = sessionmaker
        self.audit = audit
        self.clock = clock
        self.vault = vault
        self.lockout = lockout
        self.rate_limit = rate_limit
        self.devices = devices
        # argon2 costs tens of milliseconds of CPU: run it on its own small pool, never on the event
        # loop, so unauthenticated clients cannot stall live sessions.
        self._hash_pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="bastion-hash")

    async def verify_password(self, stored_hash: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hash_pool, verify_password, stored_hash, password)

    def close(self) -> None:
        self._hash_pool.shutdown(wait=False, cancel_futures=True)

    async def load(self, name: str) -> UserFacts | None:
        async with self._sessionmaker() as db:
            user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
            if user is None:
                return None
            creds = (await db.execute(select(Credential).where(Credential.user_id == user.id))).scalars().all()
        password = next((c.public for c in creds if c.kind == "password"), None)
        keys = {c.fingerprint: (c.id, c.kind) for c in creds if c.kind in (KEY_ORDINARY, KEY_SK)}
        totp_id = next((c.id for c in creds if c.kind == "totp"), None)
        webauthn_ids = tuple(c.id for c in creds if c.kind == "webauthn")
        devices = await self.devices.for_user(user.id)
        return UserFacts(user.id, user.name, tuple(user.roles or ()), tuple(user.groups or ()),
                         user.status == "active", user.locked_until, password, keys, totp_id, devices, webauthn_ids)

    async def totp_secret(self, user_id: int, credential_id: int) -> str | None:
        async with self._sessionmaker() as db:
            cred = await db.get(Credential, credential_id)
        if cred is None or cred.secret is None:
            return None
        return self.vault.open(cred.secret, totp_context(user_id)).decode()

    async def claim_step(self, credential_id: int, step: int) -> bool:
        """Accept a TOTP step at most once, even with several nodes racing (atomic compare-and-set)."""
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(update(Credential).where(Credential.id == credential_id,
                                                               Credential.counter < step)
                                      .values(counter=step, last_used_at=self.clock.now()))
            return result.rowcount == 1

    async def claim_counter(self, credential_id: int, counter: int) -> bool:
        """A security key's signature counter must grow; a repeated or lower one suggests a clone."""
        async with self._sessionmaker() as db, db.begin():
            result = await db.execute(update(Credential).where(Credential.id == credential_id,
                                                               Credential.counter < counter)
                                      .values(counter=counter, last_used_at=self.clock.now()))
            return result.rowcount == 1

    async def touch(self, credential_id: int) -> None:
        async with self._sessionmaker() as db, db.begin():
            await db.execute(update(Credential).where(Credential.id == credential_id)
                             .values(last_used_at=self.clock.now()))


class AuthFlow:
    """Collects factors for one login from one source until the demanded level is reached."""

    def __init__(self, authenticator: Authenticator, source_addr: str, source_port: int = 0,
                 peer_mac: str | None = None):
        self._auth = authenticator
        self.source_addr = source_addr
        self.source_port = source_port
        self.peer_mac = peer_mac
        self.login_name = ""
        self.target = ""
        self.user: UserFacts | None = None
        self.factors: list[str] = []
        self.required_level = 1
        self.device: DeviceMatch | None = None
        self._used_credentials: set[int] = set()
        self._reported: set[str] = set()
        self._finished = False

    # state -----------------------------------------------------------------------------------------------

    async def start(self, login_name: str) -> None:
        self.login_name = login_name[:64]
        self.user = await self._auth.load(login_name)
        if self.user is not None:
            self.device = match_mac(self.user.devices, self.peer_mac)

    def demand(self, level: int) -> None:
        self.required_level = max(self.required_level, level)

    @property
    def level(self) -> int:
        return levels.level_of(self.factors)

    @property
    def complete(self) -> bool:
        return self.level >= max(1, self.required_level)

    def wants(self) -> str:
        """"first", "second" (TOTP or a key touched) or "verified" (a key with user verification)."""
        if self.level == 0:
            return "first"
        return "verified" if self.required_level >= 3 else "second"

    def can_offer(self) -> set[str]:
        """Factor kinds this user could still give for what is wanted (empty: the login cannot finish)."""
        user = self._usable()
        want = self.wants()
        if want == "first":
            return {levels.PASSWORD, levels.PUBLICKEY}
        if user is None:
            return set()
        unused_sk = {fp for fp in user.sk_fingerprints() if user.keys[fp][0] not in self._used_credentials}
        offers = set()
        if unused_sk:
            offers.add(levels.SK_VERIFIED if want == "verified" else levels.SK)
        if any(cid not in self._used_credentials for cid in user.webauthn_ids):
            offers.add(levels.WEBAUTHN_VERIFIED if want == "verified" else levels.WEBAUTHN)
        if want == "second" and user.has_totp and levels.TOTP not in self.factors:
            offers.add(levels.TOTP)
        return offers

    @property
    def identity(self) -> Identity | None:
        user = self.user
        if user is None or not self.factors:
            return None
        return Identity(user.id, user.name, user.roles, user.groups, self.level, tuple(self.factors),
                        self.source_addr, self.source_port,
                        device_id=self.device.device_id if self.device else None,
                        device_proof=self.device.proof if self.device else "")

    def prospective_identity(self, method: str) -> Identity | None:
        """The identity this login would have after one more first factor (to check a route early)."""
        user = self._usable()
        if user is None:
            return None
        factors = tuple(self.factors) or (method,)
        return Identity(user.id, user.name, user.roles, user.groups, levels.level_of(factors), factors,
                        self.source_addr, self.source_port,
                        device_id=self.device.device_id if self.device else None,
                        device_proof=self.device.proof if self.device else "")

    def _usable(self) -> UserFacts | None:
        # Disabled users get exactly the answer unknown users get.
        return self.user if self.user is not None and self.user.active else None

    def _locked(self) -> bool:
        return self.user is not None and self._auth.lockout.is_locked(self.user.locked_until)

    # audit -----------------------------------------------------------------------------------------------

    async def _fail(self, method: str, reason: str) -> None:
        await self._auth.audit.emit(AuthFailure(
            actor=self.login_name, source=self.source_addr, target=self.target[:128], method=method, reason=reason,
            level=self.level, device=self.device.name if self.device else ""))

    async def _wrong(self, method: str, reason: str) -> Verdict:
        self._auth.rate_limit.failure(self.source_addr)
        locked = await self._auth.lockout.wrong_secret(self.user.id if self._usable() else None)
        await self._fail(method, reason)
        if locked and self.user is not None:
            await self._auth.audit.emit(AuthLockout(actor=self.user.name, source=self.source_addr,
                                                    threshold=self._auth.lockout.threshold))
            self.user = await self._auth.load(self.user.name)  # now carries locked_until
        return Verdict.WRONG

    async def _gate(self, method: str) -> bool:
        """Checks before a secret is even looked at: rate limit and lockout."""
        if not self._auth.rate_limit.allowed(self.source_addr):
            if "rate" not in self._reported:
                self._reported.add("rate")
                await self._fail(method, "source rate limited")
            return False
        return True

    async def _accepted(self, method: str, factor: str, credential_id: int | None = None) -> Verdict:
        self.factors.append(factor)
        if credential_id is not None:
            self._used_credentials.add(credential_id)
        if not self.complete:
            await self._auth.audit.emit(AuthPartial(actor=self.login_name, source=self.source_addr,
                                                    target=self.target[:128], method=method, level=self.level,
                                                    required_level=self.required_level))
        return Verdict.ACCEPTED

    # factors ---------------------------------------------------------------------------------------------

    async def password(self, password: str) -> Verdict:
        if self.wants() != "first" or not await self._gate(levels.PASSWORD):
            return Verdict.REFUSED
        user = self._usable()
        ok = await self._auth.verify_password(user.password_hash if user else None, password)
        if self._locked():
            await self._fail(levels.PASSWORD, "account locked")
            return Verdict.REFUSED
        if not ok or user is None:
            return await self._wrong(levels.PASSWORD, "wrong password" if user else self._reason_unusable())
        return await self._accepted(levels.PASSWORD, levels.PASSWORD)

    async def totp(self, code: str) -> Verdict:
        user = self._usable()
        if user is None or not user.has_totp or levels.TOTP not in self.can_offer():
            return Verdict.REFUSED
        if not await self._gate(levels.TOTP):
            return Verdict.REFUSED
        if self._locked():
            await self._fail(levels.TOTP, "account locked")
            return Verdict.REFUSED
        secret = await self._auth.totp_secret(user.id, user.totp_id)
        step = totp.matching_step(secret, code, self._auth.clock.now()) if secret else None
        if step is None:
            return await self._wrong(levels.TOTP, "wrong code")
        if not await self._auth.claim_step(user.totp_id, step):
            return await self._wrong(levels.TOTP, "code already used")
        return await self._accepted(levels.TOTP, levels.TOTP, user.totp_id)

    def key_kind(self, fingerprint: str) -> str | None:
        """KEY_ORDINARY, KEY_SK or "device" when this key may be used for what is wanted now."""
        user = self._usable()
        if user is None:
            return None
        want = self.wants()
        if fingerprint in user.keys:
            credential_id, kind = user.keys[fingerprint]
            if credential_id in self._used_credentials:
                return None
            if want == "first" or kind == KEY_SK:
                return kind
            return None
        if want == "first" and match_key(user.devices, fingerprint) is not None:
            return "device"
        return None

    async def key_acceptable(self, fingerprint: str) -> bool:
        if self.key_kind(fingerprint) is not None:
            return True
        if fingerprint not in self._reported:
            self._reported.add(fingerprint)
            await self._fail(levels.PUBLICKEY, "key not registered" if self._usable() else self._reason_unusable())
        return False

    async def key_signed(self, fingerprint: str, assertion: SkAssertion | None) -> Verdict:
        """A signature by this key verified; record the factor it proves (or refuse a replayed counter)."""
        kind = self.key_kind(fingerprint)
        user = self._usable()
        if kind is None or user is None:
            return Verdict.REFUSED
        if self._locked():
            await self._fail(levels.PUBLICKEY, "account locked")
            return Verdict.REFUSED
        # A key registered on an approved device proves that device, whatever else it is.
        self.device = match_key(user.devices, fingerprint) or self.device
        if kind == "device":
            return await self._accepted(levels.PUBLICKEY, levels.PUBLICKEY)
        credential_id = user.keys[fingerprint][0]
        if kind == KEY_ORDINARY:
            await self._auth.touch(credential_id)
            return await self._accepted(levels.PUBLICKEY, levels.PUBLICKEY, credential_id)
        if assertion is None or not assertion.user_present:
            return await self._wrong(levels.SK, "security key signature without user presence")
        if not await self._auth.claim_counter(credential_id, assertion.counter):
            return await self._wrong(levels.SK, "security key counter did not increase (cloned key?)")
        factor = levels.SK_VERIFIED if assertion.user_verified else levels.SK
        return await self._accepted(factor, factor, credential_id)

    async def wrong_answer(self, method: str, reason: str) -> Verdict:
        """A factor answered wrongly outside this module's own checks (e.g. a WebAuthn signature)."""
        return await self._wrong(method, reason)

    async def webauthn(self, credential_id: int, user_present: bool, user_verified: bool, counter: int) -> Verdict:
        """A browser security key answered (already verified by the WebAuthn service)."""
        user = self._usable()
        if user is None or self.wants() == "first" or credential_id in self._used_credentials:
            return Verdict.REFUSED
        if self._locked():
            await self._fail(levels.WEBAUTHN, "account locked")
            return Verdict.REFUSED
        if not user_present:
            return await self._wrong(levels.WEBAUTHN, "security key answer without user presence")
        # Authenticators without a counter always send 0; any other value must grow.
        if counter != 0 and not await self._auth.claim_counter(credential_id, counter):
            return await self._wrong(levels.WEBAUTHN, "security key counter did not increase (cloned key?)")
        factor = levels.WEBAUTHN_VERIFIED if user_verified else levels.WEBAUTHN
        return await self._accepted(factor, factor, credential_id)

    async def approved_in_browser(self, factor: str) -> Verdict:
        """The user confirmed this login in the console with a security key (a one-time approval)."""
        if self._usable() is None or factor not in (levels.WEBAUTHN, levels.WEBAUTHN_VERIFIED):
            return Verdict.REFUSED
        return await self._accepted("browser-approval", factor)

    def _reason_unusable(self) -> str:
        return "unknown user" if self.user is None else "user disabled"

    # outcome ---------------------------------------------------------------------------------------------

    async def succeeded(self) -> None:
        identity = self.identity
        assert identity is not None and self.complete
        if self._finished:
            return
        self._finished = True
        await self._auth.lockout.succeeded(identity.user_id)
        if self.device is not None:
            await self._auth.devices.seen(self.device.device_id)
        await self._auth.audit.emit(AuthSuccess(
            actor=identity.name, source=self.source_addr, target=self.target[:128], method=identity.methods[-1],
            level=identity.level, methods=identity.methods, device=self.device.name if self.device else "",
            device_proof=self.device.proof if self.device else ""))

    async def refused_after_credentials(self, method: str, reason: str) -> None:
        """Credentials were right but the request is not allowed (does not count towards lockout)."""
        self.factors.clear()
        self._used_credentials.clear()
        await self._fail(method, reason)
