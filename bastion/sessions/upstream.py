"""Outbound connections to targets with vaulted credentials and pinned host keys."""

from __future__ import annotations

import asyncio
import logging

import asyncssh

from bastion.admin import account_context
from bastion.audit.events import HostKeyMismatch as HostKeyMismatchEvent
from bastion.audit.events import UpstreamFailure
from bastion.audit.log import AuditLog
from bastion.config import Config
from bastion.errors import HostKeyMismatch, UpstreamError
from bastion.policy import TargetAuthorization, require_minted
from bastion.ssh_algorithms import client_algorithm_options
from bastion.store.models import TargetAccount
from bastion.vault import Vault

log = logging.getLogger("bastion.upstream")


class _QuietClient(asyncssh.SSHClient):
    """Client callbacks for upstream connections: nothing interactive, ever."""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        pass


class UpstreamConnector:
    """Opens the bastion's own SSH connection to a target for an authorised user."""

    def __init__(self, config: Config, sessionmaker, vault: Vault, audit: AuditLog):
        self._config = config
        self._sessionmaker = sessionmaker
        self._vault = vault
        self._audit = audit

    async def _credentials(self, authorization: TargetAuthorization) -> tuple[str, bytes]:
        async with self._sessionmaker() as db:
            account = await db.get(TargetAccount, authorization.account.id)
        if account is None or account.target_id != authorization.target.id:
            raise UpstreamError("the target account no longer exists")
        secret = self._vault.open(account.secret, account_context(account.target_id, account.login))
        return account.kind, secret

    async def connect(self, authorization: TargetAuthorization, session_id: str = "") -> asyncssh.SSHClientConnection:
        """Connect and log in as the granted account; raise UpstreamError with a safe message."""
        require_minted(authorization)
        target = authorization.target
        kind, secret = await self._credentials(authorization)
        try:
            trusted = [asyncssh.import_public_key(line) for line in target.host_keys.splitlines() if line.strip()]
        except (asyncssh.KeyImportError, ValueError):
            raise UpstreamError(f"the pinned host key of {target.name} is unusable; ask an administrator") from None
        auth_options: dict[str, object]
        if kind == "key":
            auth_options = {"client_keys": [asyncssh.import_private_key(secret)], "password": None,
                            "preferred_auth": "publickey"}
        else:
            auth_options = {"client_keys": None, "password": secret.decode(),
                            "preferred_auth": "password,keyboard-interactive"}
        del secret
        timeout = self._config["upstream.connect_timeout"]
        actor = authorization.identity.name
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                target.host, target.port, username=authorization.account.login, known_hosts=(trusted, [], []),
                # Never consult this host's ~/.ssh, agent or OpenSSH config: the vault is the only source.
                config=None, agent_path=None, agent_forwarding=False, gss_auth=False, host_based_auth=False,
                ignore_encrypted=True, client_factory=_QuietClient, encoding=None,
                connect_timeout=timeout, login_timeout=timeout,
                keepalive_interval=self._config["ssh.keepalive_interval"],
                rekey_bytes=self._config["ssh.rekey_bytes"], rekey_seconds=self._config["ssh.rekey_seconds"],
                **client_algorithm_options(), **auth_options), timeout=timeout + 1)
        except asyncssh.HostKeyNotVerifiable:
            await self._audit.emit(HostKeyMismatchEvent(actor=actor, source=authorization.identity.source_addr,
                                                        target=target.name, session_id=session_id,
                                                        host=target.host, port=target.port))
            raise HostKeyMismatch(f"host key verification failed for {target.name}: the target presented a key "
                                  "that does not match the pinned one; an administrator must check it") from None
        except asyncio.CancelledError:
            raise
        except (OSError, asyncssh.Error, asyncio.TimeoutError, TimeoutError) as exc:
            reason = _safe_reason(exc)
            await self._audit.emit(UpstreamFailure(actor=actor, source=authorization.identity.source_addr,
                                                   target=target.name, session_id=session_id, reason=reason))
            raise UpstreamError(f"could not reach {target.name}: {reason}") from None
        return conn


def _safe_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.PermissionDenied):
        return "the target refused the bastion's credentials"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncssh.Error):
        return "SSH negotiation failed"
    return "network error"
