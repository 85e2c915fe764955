"""One SSH session channel: the menu, the policy check for its action, then the bridge to the target."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion.audit.events import DeviceAdvisory, SessionDenied
from bastion.audit.events import StepUp as AuditStepUp
from bastion.auth import levels
from bastion.auth.flow import Verdict
from bastion.errors import BastionError, UpstreamError
from bastion.policy import Allow, AllowChannel, Deny, StepUp, TargetAuthorization, decide_channel
from bastion.sessions.bridge import Bridge
from bastion.sessions.sftpfilter import SftpFilter
from bastion.ssh.menu import Chosen, Quit, TargetMenu
from bastion.ssh.transfers import ExecTransfer, classify_exec

if TYPE_CHECKING:
    from bastion.ssh.server import GatewayServer

log = logging.getLogger("bastion.ssh")
ENV_ALLOWED = re.compile(r"TERM|LANG|LC_[A-Z_]+")
PENDING_LIMIT = 1 << 20
DENIED = "bastion: access denied"
AUTH_SETTLE_TIMEOUT = 30.0
STEP_UP_TIMEOUT = 120.0


class GatewaySession(asyncssh.SSHServerSession):
    """Channel callbacks from the client; everything after setup is handed to a Bridge."""

    def __init__(self, server: "GatewayServer"):
        self.server = server
        self.services = server.services
        self.chan: asyncssh.SSHServerChannel | None = None
        self.term_type: str | None = None
        self.term_size = (80, 24, 0, 0)
        self.term_modes: dict[int, int] = {}
        self.bridge: Bridge | None = None
        self.menu: TargetMenu | None = None
        self._pending: list[tuple[bytes, Any]] = []
        self._pending_size = 0
        self._eof = False
        self._closed = False
        self._task: asyncio.Task | None = None
        self._line: asyncio.Future | None = None
        self._line_buffer = ""
        self._line_secret = True

    # asyncssh callbacks ----------------------------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: dict) -> bool:
        self.term_type = term_type[:64] or "xterm"
        self.term_size = term_size
        self.term_modes = dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        self._start("shell", "")
        return True

    def exec_requested(self, command: str) -> bool:
        self._start("exec", command)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self._start("sftp", "")
        return True

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.bridge is not None:
            self.bridge.user_data(data, datatype)
        elif self._line is not None:
            self._line_input(data)
        elif self.menu is not None:
            self._menu_input(data)
        else:
            self._pending.append((data, datatype))
            self._pending_size += len(data)
            if self._pending_size > PENDING_LIMIT and self.chan is not None:
                self.chan.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self.bridge is not None:
            self.bridge.user_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height, pixwidth, pixheight)
        if self.bridge is not None:
            self.bridge.resize(width, height, pixwidth, pixheight)
        elif self.menu is not None and self.chan is not None:
            self.menu.height = height
            self.chan.write(self.menu.render())

    def signal_received(self, signal: str) -> None:
        if self.bridge is not None:
            self.bridge.signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.bridge is not None:
            self.bridge.send_break(msec)
            return True
        return False

    def pause_writing(self) -> None:
        if self.bridge is not None:
            self.bridge.downstream_paused()

    def resume_writing(self) -> None:
        if self.bridge is not None:
            self.bridge.downstream_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self.bridge is not None:
            self.bridge.user_gone(exc)
        elif self._task is not None and not self._task.done():
            self._task.cancel()

    # setup -----------------------------------------------------------------------------------------------

    def _start(self, kind: str, command: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(kind, command))
        self.server.channels.add(self._task)
        self._task.add_done_callback(self.server.channels.discard)

    def _fail(self, message: str, status: int = 1) -> None:
        if self.chan is not None and not self._closed:
            if self.term_type:
                message = message.replace("\n", "\r\n")
            self.chan.write_stderr((message.rstrip("\n") + ("\r\n" if self.term_type else "\n")).encode())
            self.chan.exit(status)

    async def _run(self, kind: str, command: str) -> None:
        try:
            await asyncio.wait_for(self.server.auth_ready.wait(), AUTH_SETTLE_TIMEOUT)
            authorization = self.server.authorization
            route = self.server.route
            if authorization is None and self.server.ambiguous_accounts:
                accounts = ", ".join(self.server.ambiguous_accounts)
                if not (kind == "shell" and self.term_type):
                    target = route.target if route else "?"
                    self._fail(f"bastion: several accounts on {target} are granted to you ({accounts}); "
                               f"name one: {route.user if route else 'user'}:{target}:ACCOUNT")
                    return
                await self._open_menu(only_target=route.target if route else None)
                return
            if authorization is None:
                if kind == "shell" and self.term_type:
                    await self._open_menu()
                else:
                    await self._no_target(kind)
                return
            await self._connect(authorization, kind, command)
        except asyncio.CancelledError:
            raise
        except BastionError as exc:
            self._fail(f"bastion: {exc.safe_message}")
        except Exception:
            log.exception("channel setup failed")
            self._fail("bastion: internal error; the session was not started")

    async def _no_target(self, kind: str) -> None:
        identity = self.server.flow.identity
        items = await self.services.policy.granted_targets(identity, self.services.clock.now())
        user = identity.name if identity else "user"
        lines = [f"bastion: no target given. Connect with ssh {user}:TARGET@bastion "
                 f"(or {user}#TARGET for scp/sftp)."]
        if items:
            lines.append("Targets granted to you:")
            lines += [f"  {item.target}:{item.account}  ({', '.join(sorted(item.actions))})" for item in items]
        else:
            lines.append("No targets are granted to you.")
        self._fail("\n".join(lines))

    async def _open_menu(self, only_target: str | None = None) -> None:
        identity = self.server.flow.identity
        items = await self.services.policy.granted_targets(identity, self.services.clock.now())
        if only_target is not None:
            items = [i for i in items if i.target == only_target]
        self.menu = TargetMenu(identity.name, items, height=self.term_size[1] or 24)
        assert self.chan is not None
        self.chan.write(self.menu.render())
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data, _ in pending:
            self._menu_input(data)

    def _menu_input(self, data: bytes) -> None:
        assert self.menu is not None and self.chan is not None
        outcome = self.menu.feed(data)
        if outcome is None:
            self.chan.write(self.menu.render())
        elif isinstance(outcome, Quit):
            self.menu = None
            self.chan.write(b"\x1b[H\x1b[2J")
            self.chan.exit(0)
        elif isinstance(outcome, Chosen):
            self.menu = None
            self._task = asyncio.get_running_loop().create_task(self._chosen(outcome))
            self.server.channels.add(self._task)
            self._task.add_done_callback(self.server.channels.discard)

    async def _chosen(self, chosen: Chosen) -> None:
        try:
            await self._choose(chosen)
        except asyncio.CancelledError:
            raise
        except BastionError as exc:
            self._fail(f"bastion: {exc.safe_message}")
        except Exception:
            log.exception("menu selection failed")
            self._fail("bastion: internal error; the session was not started")

    async def _choose(self, chosen: Chosen) -> None:
        identity = self.server.flow.identity
        decision = await self.services.policy.authorize_target(identity, chosen.item.target, chosen.item.account,
                                                              self.services.clock.now())
        assert self.chan is not None
        self.chan.write(b"\x1b[H\x1b[2J")
        if isinstance(decision, StepUp):
            decision = await self._step_up(chosen.item.target, chosen.item.account, decision.level)
            if decision is None:
                return
        if isinstance(decision, Allow):
            await self._connect(decision.authorization, "shell", "")
        elif isinstance(decision, Deny) and decision.user_message:
            self._fail(f"bastion: {decision.user_message}")
        else:
            self._fail(DENIED)

    async def _step_up(self, target: str, account: str, level: int):
        """Raise this login's level in-band (a TOTP prompt in the terminal); None when it cannot."""
        flow = self.server.flow
        flow.demand(level)
        offers = flow.can_offer()
        if levels.TOTP not in offers:
            if self.server._browser_possible(offers) and flow.user is not None:
                return await self._step_up_in_browser(target, account, level)
            needed = levels.NEEDS[level]
            self._fail(f"bastion: {target} demands authentication level {level}: {needed}.\n"
                       + ("Reconnect with your security key: ssh -i YOUR_SK_KEY "
                          f"{flow.login_name}:{target}@bastion" if level >= 2 else "")
                       + ("\n(or register a security key in the web console, then approve such steps in "
                          "the browser)" if level >= 3 else ""))
            return None
        for attempt in range(3):
            self.chan.write(f"{target} needs level {level}. Verification code: ".encode())
            code = await self._read_line(secret=True)
            if code is None:
                return None
            verdict = await flow.totp(code)
            if verdict is Verdict.ACCEPTED:
                identity = flow.identity
                await self.services.audit.emit(AuditStepUp(actor=identity.name, source=identity.source_addr,
                                                           target=target, method=levels.TOTP, level=identity.level))
                self.chan.write(b"\r\n")
                return await self.services.policy.authorize_target(identity, target, account,
                                                                   self.services.clock.now())
            self.chan.write(b"\r\nbastion: that code was not accepted\r\n")
            if verdict is Verdict.REFUSED:
                break
        self._fail("bastion: step-up failed")
        return None

    async def _step_up_in_browser(self, target: str, account: str, level: int):
        """A one-time link the user opens in the console and approves with a security key (user verified for
        level 3); the session continues once approved, or ends when the link expires."""
        flow, approvals = self.server.flow, self.services.approvals
        token = await approvals.create(flow.user.id, self.server.connection_id, target, level)
        seconds = int(approvals.lifetime.total_seconds())
        self.chan.write(f"{target} needs level {level}. Approve with your security key in the browser:\r\n\r\n"
                        f"  {self.services.public_url}/approve/{token}\r\n\r\n"
                        f"The link works once, for this session, for {seconds} seconds. Waiting...\r\n".encode())
        method = await approvals.wait(token, self.server.connection_id, approvals.lifetime.total_seconds())
        if method is None or await flow.approved_in_browser(method) is not Verdict.ACCEPTED:
            self._fail("bastion: the step-up was not approved in time")
            return None
        identity = flow.identity
        await self.services.audit.emit(AuditStepUp(actor=identity.name, source=identity.source_addr,
                                                   target=target, method=method, level=identity.level))
        self.chan.write(b"approved\r\n")
        return await self.services.policy.authorize_target(identity, target, account, self.services.clock.now())

    async def _read_line(self, secret: bool, limit: int = 64) -> str | None:
        """Read one line typed in the terminal (not echoed when secret); None on Ctrl-C, EOF or timeout."""
        self._line = asyncio.get_running_loop().create_future()
        self._line_buffer = ""
        self._line_secret = secret
        try:
            return await asyncio.wait_for(self._line, STEP_UP_TIMEOUT)
        except asyncio.TimeoutError:
            return None
        finally:
            self._line = None

    def _line_input(self, data: bytes) -> None:
        for char in data.decode("utf-8", "ignore"):
            if char in "\r\n":
                if not self._line.done():
                    self._line.set_result(self._line_buffer)
                return
            if char in "\x03\x04":
                if not self._line.done():
                    self._line.set_result(None)
                return
            if char in "\x7f\x08":
                self._line_buffer = self._line_buffer[:-1]
            elif char.isprintable() and len(self._line_buffer) < 64:
                self._line_buffer += char
                if not self._line_secret:
                    self.chan.write(char.encode())

    async def _connect(self, login_authorization: TargetAuthorization, kind: str, command: str) -> None:
        # Decide again for every channel: a grant revoked or a user disabled since login must not
        # let a new channel through on a long-lived connection (ControlMaster).
        now = self.services.clock.now()
        fresh = await self.services.policy.authorize_target(
            self.server.flow.identity, login_authorization.target.name, login_authorization.account.login, now)
        if not isinstance(fresh, Allow):
            identity = login_authorization.identity
            reason = fresh.reason if isinstance(fresh, Deny) else f"level {fresh.level} needed"
            await self.services.audit.emit(SessionDenied(actor=identity.name, source=identity.source_addr,
                                                         target=login_authorization.target.name, kind=kind,
                                                         reason=reason))
            if isinstance(fresh, StepUp):
                self._fail(f"bastion: {login_authorization.target.name} now demands authentication level "
                           f"{fresh.level}: {levels.NEEDS[fresh.level]}; reconnect")
            else:
                self._fail(f"bastion: {fresh.user_message}" if fresh.user_message else DENIED)
            return
        authorization = fresh.authorization
        transfer: ExecTransfer | None = classify_exec(command) if kind == "exec" else None
        if kind == "sftp":
            decisions = [decide_channel(authorization, a, now) for a in ("sftp-read", "sftp-write")]
            decision = next((d for d in decisions if isinstance(d, AllowChannel)), decisions[0])
        elif transfer is not None:
            decision = decide_channel(authorization, transfer.action, now)
            if not isinstance(decision, AllowChannel):
                decision = decide_channel(authorization, "exec", now)
        else:
            decision = decide_channel(authorization, kind, now)
        if isinstance(decision, Deny):
            identity = authorization.identity
            await self.services.audit.emit(SessionDenied(actor=identity.name, source=identity.source_addr,
                                                         target=authorization.target.name, kind=kind,
                                                         reason=decision.reason))
            if kind == "sftp" and self.chan is not None:
                self.chan.close()
            else:
                what = {"shell": "interactive shell", "exec": "command execution"}.get(kind, kind)
                self._fail(f"bastion: {what} on {authorization.target.name} is not granted to you")
            return
        assert isinstance(decision, AllowChannel)
        if authorization.device_unproven:
            identity = authorization.identity
            await self.services.audit.emit(DeviceAdvisory(actor=identity.name, source=identity.source_addr,
                                                          target=authorization.target.name,
                                                          mac=self.server.flow.peer_mac or ""))
        record_io = kind in ("shell", "exec") and transfer is None
        width, height = self.term_size[0] or 80, self.term_size[1] or 24
        live = await self.services.sessions.begin(
            decision.authorization, kind=kind, command=command, connection_id=self.server.connection_id,
            width=width, height=height, term=self.term_type or "", echo_tracking=bool(self.term_type) and record_io,
            terminate_cb=self._terminate)
        assert self.chan is not None
        bridge = Bridge(live, self.chan, self.services.sessions, record_io=record_io)
        if kind == "sftp":
            bridge.sftp = SftpFilter(
                may_read=authorization.allows("sftp-read"), may_write=authorization.allows("sftp-write"),
                on_transfer=lambda d, p, n: bridge.transfer("sftp", d, p, n),
                on_denied=lambda op, p: bridge.transfer_denied("sftp", op, p))
        # What the client sent while the session was being set up goes first, in order, then its EOF.
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data, datatype in pending:
            bridge.user_data(data, datatype)
        if self._eof:
            bridge.user_eof()
        self.bridge = bridge
        if self._closed:
            bridge.user_gone(None)
            return
        try:
            upstream = await self.server.upstream(authorization, live.id)
            env = {k: v for k, v in self.chan.get_environment().items()
                   if ENV_ALLOWED.fullmatch(k) and len(v) <= 256 and v.isprintable()}
            if self.term_type:
                env["TERM"] = self.term_type
            await bridge.start(upstream, command=command if kind == "exec" else None,
                               subsystem="sftp" if kind == "sftp" else None, term_type=self.term_type,
                               term_size=self.term_size if self.term_type else None, term_modes=self.term_modes,
                               env=env, window=self.services.config["ssh.window"])
        except asyncio.CancelledError:
            bridge.terminate("cancelled")
            raise
        except (UpstreamError, asyncssh.Error, OSError) as exc:
            message = exc.safe_message if isinstance(exc, UpstreamError) else "the target refused the session"
            live.end_reason = "upstream failure"
            bridge.terminate(message)
            return
        if transfer is not None:
            def report(_: asyncio.Future) -> None:
                size = live.bytes_up if transfer.direction == "upload" else live.bytes_down
                bridge.transfer(transfer.protocol, transfer.direction, transfer.path, size)
            bridge.done.add_done_callback(report)
        self.chan.resume_reading()

    def _terminate(self, reason: str) -> None:
        if self.bridge is not None:
            self.bridge.terminate(reason)
        elif self.chan is not None:
            self._fail(f"bastion: session ended: {reason}", 255)
