"""Administrative operations on users, targets, accounts and grants; each change is audited."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterable

import asyncssh
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from bastion.audit.events import AdminChange
from bastion.audit.log import AuditLog
from bastion.auth.passwords import hash_password
from bastion.clock import Clock
from bastion.errors import BastionError, Conflict, NotFound, UsageError
from bastion.policy import ACTIONS
from bastion.store.models import Credential, Grant, GroupPolicy, Session, Target, TargetAccount, User
from bastion.vault import Vault

ROLES = ("admin", "auditor", "user")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOGIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
GROUP_NAME = USER_NAME
# A login name's target part that the gateway serves itself (the SFTP view of published datasets).
DATASETS_LOGIN = "datasets"
RESERVED_TARGET_NAMES = (DATASETS_LOGIN,)
HOST_NAME = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
USER_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
                  "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
SK_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def key_credential_kind(key: asyncssh.SSHKey) -> str:
    """Credential kind of a login key: a FIDO2 security key, or an ordinary one."""
    return "sk_key" if key.get_algorithm() in SK_KEY_TYPES else "ssh_key"
MIN_RSA_BITS = 3072


def check_name(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value[:40]) if isinstance(value, str) else "?"
        raise UsageError(f"invalid {kind} name {shown}: use letters, digits, '.', '_' or '-'")
    return value


def check_device_policy(value: str | None) -> None:
    if value is not None and value not in ("off", "advisory", "required"):
        raise UsageError("device policy must be off, advisory or required")


def account_context(target_id: int, login: str) -> str:
    """Vault context that binds a sealed secret to its target account."""
    return f"target-account:{target_id}:{login}"


def parse_user_key(text: str) -> asyncssh.SSHKey:
    """An OpenSSH public key line a user may log in with; clear error otherwise."""
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError, UnicodeError):
        raise UsageError("not an OpenSSH public key") from None
    alg = key.get_algorithm()
    if alg not in USER_KEY_TYPES:
        raise UsageError(f"key type {alg} is not accepted (use ed25519 or ecdsa)")
    if alg == "ssh-rsa" and key.pyca_key.key_size < MIN_RSA_BITS:
        raise UsageError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    return key


def parse_host_keys(text: str) -> str:
    """Normalise pinned host keys: OpenSSH public key lines, or known_hosts lines."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        candidates = [" ".join(parts[i:i + 2]) for i in range(min(len(parts), 3))]
        for candidate in candidates:
            try:
                key = asyncssh.import_public_key(candidate)
            except (asyncssh.KeyImportError, ValueError, UnicodeError):
                continue
            keys.append(key.export_public_key().decode().strip())
            break
        else:
            raise UsageError("host key file holds a line that is not an SSH public key")
    if not keys:
        raise UsageError("no host key given")
    return "\n".join(dict.fromkeys(keys))


def fingerprints(host_keys: str) -> list[str]:
    return [asyncssh.import_public_key(line).get_fingerprint("sha256") for line in host_keys.splitlines() if line]


def _parse_time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text[:40]!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


@dataclass
class Admin:
    """The operations the CLI (and later the console) perform; `actor` names who does them."""

    sessionmaker: async_sessionmaker
    vault: Vault
    audit: AuditLog
    clock: Clock
    actor: str = "cli"
    source: str = "local"

    async def _audit(self, action: str, obj: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        await self.audit.emit(AdminChange(actor=self.actor, source=self.source, target=obj, action=action,
                                          object=obj, before=before, after=after))

    # users -----------------------------------------------------------------------------------------------

    async def add_user(self, name: str, roles: Iterable[str] = ("user",), password: str | None = None,
                       ssh_keys: Iterable[str] = (), groups: Iterable[str] = ()) -> dict[str, Any]:
        check_name("user", name, USER_NAME)
        roles = sorted(set(roles) or {"user"})
        for role in roles:
            if role not in ROLES:
                raise UsageError(f"unknown role {role[:20]!r}: use admin, auditor or user")
        groups = sorted(set(groups))
        for group in groups:
            check_name("group", group, GROUP_NAME)
        keys = [parse_user_key(k) for k in ssh_keys]
        password_hash = hash_password(password, (name,)) if password is not None else None
        now = self.clock.now()
        async with self.sessionmaker() as db:
            try:
                async with db.begin():
                    user = User(name=name, roles=roles, groups=groups, status="active", created_at=now)
                    db.add(user)
                    await db.flush()
                    if password_hash:
                        db.add(Credential(user_id=user.id, kind="password", public=password_hash, created_at=now))
                    for key in keys:
                        db.add(Credential(user_id=user.id, kind=key_credential_kind(key),
                                          public=key.export_public_key().decode().strip(),
                                          fingerprint=key.get_fingerprint("sha256"),
                                          label=key.get_comment() or "", created_at=now))
            except IntegrityError:
                raise Conflict(f"user {name} already exists") from None
        after = {"name": name, "roles": roles, "groups": groups, "password": bool(password_hash),
                 "ssh_keys": [k.get_fingerprint("sha256") for k in keys]}
        await self._audit("user.add", name, None, after)
        return after

    async def add_user_key(self, name: str, key_text: str) -> dict[str, Any]:
        key = parse_user_key(key_text)
        fp = key.get_fingerprint("sha256")
        kind = key_credential_kind(key)
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            existing = (await db.execute(select(Credential).where(Credential.user_id == user.id,
                                                                  Credential.fingerprint == fp))).first()
            if existing is not None:
                raise Conflict(f"{name} already has key {fp}")
            db.add(Credential(user_id=user.id, kind=kind, public=key.export_public_key().decode().strip(),
                              fingerprint=fp, label=key.get_comment() or "", created_at=self.clock.now()))
        after = {"fingerprint": fp, "kind": kind, "algorithm": key.get_algorithm()}
        await self._audit("user.key.add", name, None, after)
        return after

    async def unlock_user(self, name: str) -> None:
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            before = {"failed_count": user.failed_count,
                      "locked_until": user.locked_until.isoformat() if user.locked_until else None}
            user.failed_count, user.locked_until = 0, None
        await self._audit("user.unlock", name, before, {"failed_count": 0, "locked_until": None})

    async def set_user_policy(self, name: str, device_policy: str | None) -> None:
        check_device_policy(device_policy)
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            before = user.device_policy
            user.device_policy = device_policy
        await self._audit("user.policy", name, {"device_policy": before}, {"device_policy": device_policy})

    async def set_group_policy(self, group: str, device_policy: str | None) -> None:
        check_name("group", group, GROUP_NAME)
        check_device_policy(device_policy)
        async with self.sessionmaker() as db, db.begin():
            row = await db.get(GroupPolicy, group)
            before = row.device_policy if row else None
            if row is None:
                db.add(GroupPolicy(name=group, device_policy=device_policy))
            else:
                row.device_policy = device_policy
        await self._audit("group.policy", f"group:{group}", {"device_policy": before},
                          {"device_policy": device_policy})

    async def set_target_policy(self, name: str, *, min_level: int | None = None,
                                device_policy: str | None = None) -> None:
        if min_level is not None and min_level not in (1, 2, 3):
            raise UsageError("min level must be 1, 2 or 3")
        check_device_policy(device_policy)
        async with self.sessionmaker() as db, db.begin():
            target = await self._target(db, name)
            before = {"min_level": target.min_level, "device_policy": target.device_policy}
            if min_level is not None:
                target.min_level = min_level
            if device_policy is not None:
                target.device_policy = device_policy
            after = {"min_level": target.min_level, "device_policy": target.device_policy}
        await self._audit("target.policy", name, before, after)

    async def _user(self, db: Any, name: str) -> User:
        user = (await db.execute(select(User).where(User.name == name))).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no such user: {name[:64]}")
        return user

    async def list_users(self) -> list[dict[str, Any]]:
        async with self.sessionmaker() as db:
            users = (await db.execute(select(User).order_by(User.name))).scalars().all()
            creds = (await db.execute(select(Credential))).scalars().all()
        kinds: dict[int, list[str]] = {}
        for cred in creds:
            kinds.setdefault(cred.user_id, []).append(cred.kind)
        now = self.clock.now()
        return [{"name": u.name, "roles": list(u.roles), "groups": list(u.groups),
                 "status": "locked" if u.status == "active" and u.locked_until and u.locked_until > now else u.status,
                 "credentials": sorted(kinds.get(u.id, [])), "device_policy": u.device_policy,
                 "created_at": u.created_at.isoformat()}
                for u in users]

    async def set_user_status(self, name: str, status: str) -> None:
        async with self.sessionmaker() as db, db.begin():
            user = await self._user(db, name)
            before = user.status
            user.status = status
        await self._audit("user.disable" if status == "disabled" else "user.enable", name,
                          {"status": before}, {"status": status})

    # targets ---------------------------------------------------------------------------------------------

    async def add_target(self, name: str, host: str, port: int, host_keys: str, min_level: int | None = None,
                         labels: dict[str, str] | None = None, device_policy: str | None = None) -> dict[str, Any]:
        check_name("target", name, TARGET_NAME)
        if name.lower() in RESERVED_TARGET_NAMES:
            raise UsageError(f"target name {name!r} is reserved: 'USER#{DATASETS_LOGIN}' logins serve the SFTP "
                             "view of published datasets; choose another name")
        if not HOST_NAME.fullmatch(host or ""):
            raise UsageError("invalid host")
        if not 1 <= port <= 65535:
            raise UsageError("port must be 1-65535")
        if min_level is not None and min_level not in (1, 2, 3):
            raise UsageError("min level must be 1, 2 or 3")
        check_device_policy(device_policy)
        pinned = parse_host_keys(host_keys)
        async with self.sessionmaker() as db:
            try:
                async with db.begin():
                    db.add(Target(name=name, host=host, port=port, host_keys=pinned, labels=labels or {},
                                  min_level=min_level, device_policy=device_policy, created_at=self.clock.now()))
            except IntegrityError:
                raise Conflict(f"target {name} already exists") from None
        after = {"name": name, "host": host, "port": port, "host_key_fingerprints": fingerprints(pinned),
                 "min_level": min_level}
        await self._audit("target.add", name, None, after)
        return after

    async def update_target_address(self, name: str, host: str, port: int, host_keys: str) -> None:
        """Move a target (new address or re-pinned key); audited with before and after."""
        if not HOST_NAME.fullmatch(host or "") or not 1 <= port <= 65535:
            raise UsageError("invalid host or port")
        pinned = parse_host_keys(host_keys)
        async with self.sessionmaker() as db, db.begin():
            target = await self._target(db, name)
            before = {"host": target.host, "port": target.port, "host_key_fingerprints": fingerprints(target.host_keys)}
            target.host, target.port, target.host_keys = host, port, pinned
        await self._audit("target.update", name, before,
                          {"host": host, "port": port, "host_key_fingerprints": fingerprints(pinned)})

    async def _target(self, db: Any, name: str) -> Target:
        target = (await db.execute(select(Target).where(Target.name == name))).scalar_one_or_none()
        if target is None:
            raise NotFound(f"no such target: {name[:64]}")
        return target

    async def list_targets(self) -> list[dict[str, Any]]:
        async with self.sessionmaker() as db:
            targets = (await db.execute(select(Target).order_by(Target.name))).scalars().all()
            accounts = (await db.execute(select(TargetAccount))).scalars().all()
        by_target: dict[int, list[dict[str, Any]]] = {}
        for account in accounts:
            by_target.setdefault(account.target_id, []).append(
                {"login": account.login, "kind": account.kind, "public_key": account.public_key,
                 "min_level": account.min_level})
        return [{"name": t.name, "host": t.host, "port": t.port, "min_level": t.min_level,
                 "device_policy": t.device_policy,
                 "host_key_fingerprints": fingerprints(t.host_keys),
                 "accounts": sorted(by_target.get(t.id, []), key=lambda a: a["login"])} for t in targets]

    async def add_account(self, target_name: str, login: str, *, private_key: bytes | None = None,
                          generate: bool = False, password: str | None = None,
                          min_level: int | None = None) -> dict[str, Any]:
        check_name("account", login, LOGIN_NAME)
        if sum(x is not None and x is not False for x in (private_key, password, generate or None)) != 1:
            raise UsageError("give exactly one of --key, --generate, --password-stdin")
        public = ""
        if password is not None:
            if not password or len(password) > 1024:
                raise UsageError("account password must be 1-1024 characters")
            kind, secret = "password", password.encode()
        else:
            try:
                key = (asyncssh.generate_private_key("ssh-ed25519", comment=f"bastion:{target_name}:{login}")
                       if generate else asyncssh.import_private_key(private_key or b""))
            except (asyncssh.KeyImportError, ValueError, UnicodeError):
                raise UsageError("not an unencrypted OpenSSH or PEM private key") from None
            kind, secret = "key", key.export_private_key()
            public = key.export_public_key().decode().strip()
        async with self.sessionmaker() as db:
            try:
                async with db.begin():
                    target = await self._target(db, target_name)
                    sealed = self.vault.seal(secret, account_context(target.id, login))
                    db.add(TargetAccount(target_id=target.id, login=login, kind=kind, secret=sealed,
                                         public_key=public, min_level=min_level, created_at=self.clock.now()))
            except IntegrityError:
                raise Conflict(f"account {login} already exists on {target_name}") from None
        await self._audit("account.add", f"{target_name}:{login}", None,
                          {"target": target_name, "login": login, "kind": kind, "public_key": public})
        return {"target": target_name, "login": login, "kind": kind, "public_key": public}

    # grants ----------------------------------------------------------------------------------------------

    async def add_grant(self, *, user: str | None = None, group: str | None = None, target: str, account: str,
                        actions: Iterable[str] = ("shell", "exec"), until: str | None = None,
                        valid_from: str | None = None, min_level: int | None = None) -> dict[str, Any]:
        if (user is None) == (group is None):
            raise UsageError("give exactly one of --user or --group")
        actions = sorted(set(actions))
        if not actions:
            raise UsageError("a grant needs at least one action")
        for action in actions:
            if action not in ACTIONS:
                raise UsageError(f"unknown action {action[:20]!r}: use {', '.join(ACTIONS)}")
        if min_level is not None and min_level not in (1, 2, 3):
            raise UsageError("min level must be 1, 2 or 3")
        until_at, from_at = _parse_time(until), _parse_time(valid_from)
        async with self.sessionmaker() as db, db.begin():
            if user is not None:
                await self._user(db, user)
            else:
                check_name("group", group or "", GROUP_NAME)
            tgt = await self._target(db, target)
            acct = (await db.execute(select(TargetAccount).where(
                TargetAccount.target_id == tgt.id, TargetAccount.login == account))).scalar_one_or_none()
            if acct is None:
                raise NotFound(f"no such account {account[:32]} on {target}")
            grant = Grant(subject_kind="user" if user else "group", subject=user or group, target_id=tgt.id,
                          account_id=acct.id, actions=actions, valid_from=from_at, valid_until=until_at,
                          min_level=min_level, created_by=self.actor, created_at=self.clock.now())
            db.add(grant)
            await db.flush()
            grant_id = grant.id
        after = {"id": grant_id, "subject": f"{'user' if user else 'group'}:{user or group}", "target": target,
                 "account": account, "actions": actions, "until": until_at.isoformat() if until_at else None,
                 "from": from_at.isoformat() if from_at else None, "min_level": min_level}
        await self._audit("grant.add", f"grant:{grant_id}", None, after)
        return after

    async def list_grants(self) -> list[dict[str, Any]]:
        async with self.sessionmaker() as db:
            rows = (await db.execute(select(Grant, Target, TargetAccount)
                                     .join(Target, Grant.target_id == Target.id)
                                     .join(TargetAccount, Grant.account_id == TargetAccount.id)
                                     .order_by(Grant.id))).all()
        now = self.clock.now()
        out = []
        for grant, target, account in rows:
            state = "active"
            if grant.revoked_at is not None:
                state = "revoked"
            elif grant.valid_until is not None and grant.valid_until <= now:
                state = "expired"
            elif grant.valid_from is not None and grant.valid_from > now:
                state = "pending"
            out.append({"id": grant.id, "subject": f"{grant.subject_kind}:{grant.subject}", "target": target.name,
                        "account": account.login, "actions": list(grant.actions), "state": state,
                        "from": grant.valid_from.isoformat() if grant.valid_from else None,
                        "until": grant.valid_until.isoformat() if grant.valid_until else None,
                        "min_level": grant.min_level})
        return out

    async def revoke_grant(self, grant_id: int) -> None:
        async with self.sessionmaker() as db, db.begin():
            grant = await db.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"no such grant: {grant_id}")
            if grant.revoked_at is not None:
                raise Conflict(f"grant {grant_id} is already revoked")
            grant.revoked_at = self.clock.now()
        await self._audit("grant.revoke", f"grant:{grant_id}", {"state": "active"}, {"state": "revoked"})

    # sessions --------------------------------------------------------------------------------------------

    async def list_sessions(self, limit: int = 1000) -> list[dict[str, Any]]:
        async with self.sessionmaker() as db:
            rows = (await db.execute(select(Session).order_by(Session.started_at.desc()).limit(limit))).scalars()
            return [session_view(s) for s in rows]


def session_view(s: Session) -> dict[str, Any]:
    return {"id": s.id, "user": s.user_name, "target": s.target_name, "account": s.account_login, "kind": s.kind,
            "command": s.command, "source": s.source_addr, "node": s.node, "level": s.level,
            "device_id": s.device_id, "device_proof": s.device_proof,
            "methods": list(s.methods), "started_at": s.started_at.isoformat(),
            "ended_at": s.ended_at.isoformat() if s.ended_at else None, "end_reason": s.end_reason,
            "exit_status": s.exit_status, "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
            "status": "live" if s.ended_at is None else "ended"}


async def scan_host_keys(host: str, port: int, timeout: float = 10.0) -> str:
    """Fetch a target's host key (for pinning); the admin must compare the fingerprint out of band."""
    try:
        key = await asyncssh.get_server_host_key(host, port, login_timeout=timeout, connect_timeout=timeout)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise BastionError(f"could not fetch the host key of {host}:{port}: {type(exc).__name__}") from None
    if key is None:
        raise BastionError(f"{host}:{port} offered no host key")
    return key.export_public_key().decode().strip()
