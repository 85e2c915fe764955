"""The `bastion` command: init, serve, demo, and user/target/grant/session/recording administration."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bastion.config import SETTINGS, env_name, load_config
from bastion.errors import BastionError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DEVICE_POLICIES = ("off", "advisory", "required")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"bastion: error: {message}\n")


def _data_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "data_dir", None) or os.environ.get("BASTION_DATA_DIR")
    if not value:
        raise UsageError("no data directory: pass --data-dir DIR or set BASTION_DATA_DIR")
    return Path(value)


def _config(args: argparse.Namespace):
    data_dir = _data_dir(args)
    if not (data_dir / "bastion.toml").is_file():
        raise UsageError(f"{data_dir} is not a Bastion data directory (run `bastion init` first)")
    return load_config(data_dir)


async def _with_services(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    from bastion.services import Services

    services = await Services.open(_config(args))
    try:
        return await work(services)
    finally:
        await services.close()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _admin(services: Any) -> Any:
    return services.admin(actor=_actor(), source="local")


def _print(rows: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return
    if isinstance(rows, dict):
        for key, value in rows.items():
            print(f"{key}: {value}")
        return
    if not rows:
        print("(none)")
        return
    columns = list(columns or rows[0].keys())
    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _read_secret_stdin(what: str) -> str:
    data = sys.stdin.readline()
    if not data:
        raise UsageError(f"no {what} on standard input")
    return data.rstrip("\r\n")


def _read_file(path: str, what: str, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{what} {path} is too large")
    return data


def _key_text(path: str) -> str:
    try:
        return _read_file(path, "key file").decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not an OpenSSH public key") from None


# commands ----------------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from bastion.datadir import init_data_dir

    path = asyncio.run(init_data_dir(_data_dir(args), listen=args.listen))
    print(f"initialised {path}")
    print(f"next: bastion serve --data-dir {path}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    from bastion.store.engine import async_url

    async_url(config.database_url)
    if args.show:
        for setting in SETTINGS:
            print(f"{setting.name} = {config[setting.name]!r}    # {env_name(setting.name)}")
    print("config ok")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.listen:
        config = config.replace(listen=args.listen)
    logging.basicConfig(level=config["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return run_loop(_serve(config), config["event_loop"])


async def _serve(config: Any, announce: Callable[[tuple[str, int]], None] | None = None) -> int:
    from bastion.gateway import serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    ready: asyncio.Future = loop.create_future()

    def on_ready(fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            host, port = fut.result()
            print(f"bastion: listening on {host}:{port} (ssh and https)", flush=True)
            if announce is not None:
                announce((host, port))

    ready.add_done_callback(on_ready)
    await serve(config, ready=ready, stop=stop)
    return EXIT_OK


def run_loop(main: Any, kind: str) -> Any:
    """Run the gateway's main coroutine on the configured event loop."""
    from bastion.memtuning import tune_process

    tune_process()
    if kind == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def cmd_demo(args: argparse.Namespace) -> int:
    from bastion.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_loop(run_demo(_data_dir(args), args.listen, _serve), "uvloop")


def cmd_user_add(args: argparse.Namespace) -> int:
    password = _read_secret_stdin("password") if args.password_stdin else None
    keys = [_key_text(path) for path in args.ssh_key or []]
    result = asyncio.run(_with_services(args, lambda s: _admin(s).add_user(
        args.name, roles=args.role or ["user"], password=password, ssh_keys=keys, groups=args.group or [])))
    _print(result, args.json)
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_services(args, lambda s: _admin(s).list_users()))
    _print(rows, args.json, ["name", "roles", "groups", "status", "credentials", "device_policy"])
    return EXIT_OK


def cmd_user_disable(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_user_status(args.name, "disabled")))
    print(f"user {args.name} disabled")
    return EXIT_OK


def cmd_user_enable(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_user_status(args.name, "active")))
    print(f"user {args.name} enabled")
    return EXIT_OK


def cmd_user_key_add(args: argparse.Namespace) -> int:
    text = _key_text(args.file)
    result = asyncio.run(_with_services(args, lambda s: _admin(s).add_user_key(args.name, text)))
    kind = "security key (FIDO2)" if result["kind"] == "sk_key" else "SSH key"
    print(f"{kind} {result['fingerprint']} added to {args.name}")
    return EXIT_OK


def cmd_user_unlock(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).unlock_user(args.name)))
    print(f"user {args.name} unlocked")
    return EXIT_OK


def cmd_user_set(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_user_policy(args.name, args.device_policy)))
    print(f"user {args.name}: device policy {args.device_policy}")
    return EXIT_OK


def cmd_group_set(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_group_policy(args.name, args.device_policy)))
    print(f"group {args.name}: device policy {args.device_policy}")
    return EXIT_OK


def cmd_totp_enroll(args: argparse.Namespace) -> int:
    from bastion.auth.totp import qr_text

    async def work(services: Any) -> dict:
        return await _admin(services).enroll_totp(args.name, services.config["auth.totp_issuer"])

    result = asyncio.run(_with_services(args, work))
    if args.json:
        _print(result, True)
        return EXIT_OK
    print(f"TOTP enrolled for {args.name}. Scan this code with an authenticator app, or enter the URI:")
    print(qr_text(result["uri"]))
    print(result["uri"])
    print("This secret is shown once; `bastion user totp reset` replaces it.")
    return EXIT_OK


def cmd_totp_reset(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).reset_totp(args.name)))
    print(f"TOTP removed for {args.name}")
    return EXIT_OK


def cmd_device_add(args: argparse.Namespace) -> int:
    key = _key_text(args.ssh_key) if args.ssh_key else None
    if args.issue_cert and Path(args.issue_cert).exists():
        raise UsageError(f"{args.issue_cert} exists; refusing to overwrite it")

    async def work(services: Any) -> dict:
        return await _admin(services).add_device(args.user, args.name, args.mac or [], ssh_key=key,
                                                 keys_dir=services.config.keys_dir,
                                                 issue_cert=bool(args.issue_cert))

    result = asyncio.run(_with_services(args, work))
    p12 = result.pop("p12", None)
    password = result.pop("p12_password", None)
    result.pop("p12_base64", None)
    if p12 is not None:
        fd = os.open(args.issue_cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(p12)
    if args.json:
        _print({**result, **({"p12_file": args.issue_cert, "p12_password": password} if p12 else {})}, True)
        return EXIT_OK
    print(f"device {result['id']} ({args.user}/{args.name}) added, pending approval: "
          f"bastion device approve {result['id']}")
    if p12 is not None:
        print(f"client certificate written to {args.issue_cert}; its import password (shown once): {password}")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_services(args, lambda s: _admin(s).list_devices(args.user)))
    _print(rows, args.json, ["id", "user", "name", "status", "macs", "ssh_fingerprint", "last_seen_at"])
    return EXIT_OK


def cmd_device_approve(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_device_status(args.id, "approved")))
    print(f"device {args.id} approved")
    return EXIT_OK


def cmd_device_revoke(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).set_device_status(args.id, "revoked")))
    print(f"device {args.id} revoked")
    return EXIT_OK


def cmd_target_set(args: argparse.Namespace) -> int:
    if args.min_level is None and args.device_policy is None:
        raise UsageError("give --min-level and/or --device-policy")
    asyncio.run(_with_services(args, lambda s: _admin(s).set_target_policy(
        args.name, min_level=args.min_level, device_policy=args.device_policy)))
    print(f"target {args.name} updated")
    return EXIT_OK


def cmd_target_add(args: argparse.Namespace) -> int:
    from bastion.admin import fingerprints, scan_host_keys

    if args.scan:
        host_keys = asyncio.run(scan_host_keys(args.host, args.port))
        print(f"scanned {args.host}:{args.port}: {fingerprints(host_keys)[0]}")
        print("compare this fingerprint with the target's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")
    else:
        host_keys = _read_file(args.host_key, "host key file").decode("ascii", "replace")
    result = asyncio.run(_with_services(args, lambda s: _admin(s).add_target(
        args.name, args.host, args.port, host_keys, min_level=args.min_level, device_policy=args.device_policy)))
    _print(result, args.json)
    return EXIT_OK


def cmd_target_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_services(args, lambda s: _admin(s).list_targets()))
    if not args.json:
        for row in rows:
            row["accounts"] = [a["login"] for a in row["accounts"]]
    _print(rows, args.json, ["name", "host", "port", "min_level", "accounts", "host_key_fingerprints"])
    return EXIT_OK


def cmd_account_add(args: argparse.Namespace) -> int:
    password = _read_secret_stdin("password") if args.password_stdin else None
    private_key = _read_file(args.key, "key file") if args.key else None
    result = asyncio.run(_with_services(args, lambda s: _admin(s).add_account(
        args.target, args.login, private_key=private_key, generate=args.generate, password=password,
        min_level=args.min_level)))
    if args.json:
        _print(result, True)
    else:
        print(f"account {args.login} added to {args.target} ({result['kind']})")
        if result["public_key"]:
            print("install this public key on the target (~/.ssh/authorized_keys of the account):")
            print(result["public_key"])
    return EXIT_OK


def cmd_grant_add(args: argparse.Namespace) -> int:
    actions = [a.strip() for a in args.actions.split(",") if a.strip()]
    result = asyncio.run(_with_services(args, lambda s: _admin(s).add_grant(
        user=args.user, group=args.group, target=args.target, account=args.account, actions=actions,
        until=args.until, valid_from=args.valid_from, min_level=args.min_level)))
    _print(result, args.json)
    return EXIT_OK


def cmd_grant_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_services(args, lambda s: _admin(s).list_grants()))
    _print(rows, args.json, ["id", "subject", "target", "account", "actions", "state", "until"])
    return EXIT_OK


def cmd_grant_revoke(args: argparse.Namespace) -> int:
    asyncio.run(_with_services(args, lambda s: _admin(s).revoke_grant(args.id)))
    print(f"grant {args.id} revoked")
    return EXIT_OK


def cmd_sessions_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_services(args, lambda s: _admin(s).list_sessions(args.limit)))
    _print(rows, args.json, ["id", "user", "target", "account", "kind", "started_at", "status", "end_reason"])
    return EXIT_OK


def cmd_recording_export(args: argparse.Namespace) -> int:
    from bastion.recordings import export_session

    report = asyncio.run(_with_services(args, lambda s: export_session(s, args.session_id, Path(args.output),
                                                                       force=args.force, actor=_actor())))
    print(report)
    return EXIT_OK


def cmd_recording_verify(args: argparse.Namespace) -> int:
    from bastion.recordings import verify_sessions

    if not args.all and not args.session_id:
        raise UsageError("give a SESSION_ID or --all")
    reports = asyncio.run(_with_services(args, lambda s: verify_sessions(s, None if args.all else args.session_id,
                                                                         actor=_actor())))
    _print(reports, args.json, ["session_id", "ok", "status", "chunks", "first_bad_chunk", "reason"])
    return EXIT_OK if all(r["ok"] for r in reports) else EXIT_ERROR


def cmd_replay(args: argparse.Namespace) -> int:
    from bastion.recordings import replay_session

    if not args.speed > 0:
        raise UsageError("--speed must be positive")
    if args.start < 0:
        raise UsageError("--from must not be negative")
    asyncio.run(_with_services(args, lambda s: replay_session(s, args.session_id, speed=args.speed,
                                                             out=sys.stdout.buffer, actor=_actor(),
                                                             start=args.start)))
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    from bastion.apitokens import ApiTokens, parse_ttl

    ttl = parse_ttl(args.ttl)
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    token, info = asyncio.run(_with_services(args, lambda s: ApiTokens(s.db, s.audit, s.clock).create(
        args.user, scopes, ttl, actor=_actor(), label=args.label or "")))
    if args.json:
        _print({**info, "token": token}, True)
    else:
        print(f"token {info['id']} for {info['user']} ({', '.join(info['scopes'])}), expires {info['expires_at']}")
        print("shown once; send it as 'Authorization: Bearer <token>':")
        print(token)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    from bastion.apitokens import ApiTokens

    rows = asyncio.run(_with_services(args, lambda s: ApiTokens(s.db, s.audit, s.clock).list()))
    _print(rows, args.json, ["id", "user", "scopes", "state", "expires_at", "label"])
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from bastion.apitokens import ApiTokens

    asyncio.run(_with_services(args, lambda s: ApiTokens(s.db, s.audit, s.clock).revoke(args.id, actor=_actor())))
    print(f"token {args.id} revoked")
    return EXIT_OK


def cmd_sessions_kill(args: argparse.Namespace) -> int:
    ok = asyncio.run(_with_services(args, lambda s: s.sessions.request_kill(
        args.session_id, f"terminated by {_actor()}: {args.reason}")))
    if not ok:
        raise UsageError(f"no live session {args.session_id[:64]}")
    print(f"session {args.session_id} will end within a few seconds")
    return EXIT_OK


def cmd_audit_list(args: argparse.Namespace) -> int:
    from bastion.recordings import list_audit

    rows = asyncio.run(_with_services(args, lambda s: list_audit(s, args.type, args.limit, actor=_actor())))
    _print(rows, args.json, ["seq", "ts", "type", "actor", "source", "target", "outcome"])
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from bastion.audit.anchor import verify_for_cli
    from bastion.audit.events import AuditRead

    async def work(services: Any) -> tuple[bool, str]:
        await services.audit.emit(AuditRead(actor=_actor(), source="local", purpose="verify"))
        return await verify_for_cli(services)

    ok, message = asyncio.run(_with_services(args, work))
    _print({"ok": ok, "detail": message}, args.json)
    return EXIT_OK if ok else EXIT_ERROR


# parser ------------------------------------------------------------------------------------------------------


def _positive_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("must be a port number 1-65535")
    return int(text)


def _level(text: str) -> int:
    if text not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError("must be 1, 2 or 3")
    return int(text)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number") from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help="data directory (or BASTION_DATA_DIR)")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(prog="bastion", description="Zero-trust bastion gateway.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(group: Any, name: str, func: Callable, help: str, *extra: argparse.ArgumentParser) -> Any:
        p = group.add_parser(name, help=help, description=help, parents=[common, *extra])
        p.set_defaults(func=func)
        return p

    p = command(sub, "init", cmd_init, "create a data directory: config, keys, database")
    p.add_argument("--listen", default="127.0.0.1:8022", help="HOST:PORT of the gateway port")
    p = command(sub, "serve", cmd_serve, "run the gateway")
    p.add_argument("--listen", help="override the configured HOST:PORT")
    p = command(sub, "demo", cmd_demo, "init a demo data dir, start a demo target and serve")
    p.add_argument("--listen", default="127.0.0.1:8022", help="HOST:PORT of the gateway port")

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="sub", required=True,
                                                                            parser_class=_Parser)
    p = command(config, "check", cmd_config_check, "validate bastion.toml and BASTION_* variables")
    p.add_argument("--show", action="store_true", help="print every effective setting")

    user = sub.add_parser("user", help="users").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    p = command(user, "add", cmd_user_add, "add a user", listing)
    p.add_argument("name")
    p.add_argument("--role", action="append", choices=["admin", "auditor", "user"], help="repeatable")
    p.add_argument("--group", action="append", help="repeatable")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--ssh-key", action="append", metavar="FILE", help="OpenSSH public key file (repeatable)")
    command(user, "list", cmd_user_list, "list users", listing)
    p = command(user, "disable", cmd_user_disable, "disable a user (login refused, live sessions end)")
    p.add_argument("name")
    p = command(user, "enable", cmd_user_enable, "enable a disabled user")
    p.add_argument("name")
    p = command(user, "unlock", cmd_user_unlock, "unlock an account locked after wrong secrets")
    p.add_argument("name")
    p = command(user, "set", cmd_user_set, "set a user's device policy")
    p.add_argument("name")
    p.add_argument("--device-policy", required=True, choices=DEVICE_POLICIES)
    key = user.add_parser("key", help="user SSH keys").add_subparsers(dest="subsub", required=True,
                                                                       parser_class=_Parser)
    p = command(key, "add", cmd_user_key_add,
                "add an SSH public key (ordinary, or FIDO2 sk-ssh-ed25519/sk-ecdsa) to a user")
    p.add_argument("name")
    p.add_argument("file")
    otp = user.add_parser("totp", help="dynamic tokens").add_subparsers(dest="subsub", required=True,
                                                                         parser_class=_Parser)
    p = command(otp, "enroll", cmd_totp_enroll, "create a TOTP secret and print its URI and QR code", listing)
    p.add_argument("name")
    p = command(otp, "reset", cmd_totp_reset, "remove a user's TOTP secret")
    p.add_argument("name")

    group = sub.add_parser("group", help="groups").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    p = command(group, "set", cmd_group_set, "set the device policy of every member of a group")
    p.add_argument("name")
    p.add_argument("--device-policy", required=True, choices=DEVICE_POLICIES)

    device = sub.add_parser("device", help="devices").add_subparsers(dest="sub", required=True,
                                                                     parser_class=_Parser)
    p = command(device, "add", cmd_device_add, "enrol a device of a user (pending until approved)", listing)
    p.add_argument("user")
    p.add_argument("name")
    p.add_argument("--mac", action="append", help="MAC address on the bastion's segment (repeatable)")
    p.add_argument("--ssh-key", metavar="FILE", help="the device's own SSH public key")
    p.add_argument("--issue-cert", metavar="OUT.p12", help="issue an mTLS client certificate into this file")
    p = command(device, "list", cmd_device_list, "list devices", listing)
    p.add_argument("--user")
    p = command(device, "approve", cmd_device_approve, "approve a pending device")
    p.add_argument("id", type=int)
    p = command(device, "revoke", cmd_device_revoke, "revoke a device")
    p.add_argument("id", type=int)

    target = sub.add_parser("target", help="targets").add_subparsers(dest="sub", required=True,
                                                                     parser_class=_Parser)
    p = command(target, "add", cmd_target_add, "add a target with a pinned host key", listing)
    p.add_argument("name")
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=_positive_port)
    pin = p.add_mutually_exclusive_group(required=True)
    pin.add_argument("--host-key", metavar="FILE", help="host public key (or known_hosts lines) to pin")
    pin.add_argument("--scan", action="store_true", help="fetch the host key now and pin it (print fingerprint)")
    p.add_argument("--min-level", type=_level, help="minimum authentication level (1-3)")
    p.add_argument("--device-policy", choices=DEVICE_POLICIES)
    command(target, "list", cmd_target_list, "list targets", listing)
    p = command(target, "set", cmd_target_set, "change a target's minimum level or device policy")
    p.add_argument("name")
    p.add_argument("--min-level", type=_level)
    p.add_argument("--device-policy", choices=DEVICE_POLICIES)
    account = target.add_parser("account", help="target accounts").add_subparsers(dest="subsub", required=True,
                                                                                  parser_class=_Parser)
    p = command(account, "add", cmd_account_add, "add an account the bastion logs in with", listing)
    p.add_argument("target")
    p.add_argument("login")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--key", metavar="FILE", help="private key file")
    secret.add_argument("--generate", action="store_true", help="generate an ed25519 key and print its public key")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--min-level", type=_level)

    grant = sub.add_parser("grant", help="grants").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    p = command(grant, "add", cmd_grant_add, "grant a user or group access to a target account", listing)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--group")
    p.add_argument("--target", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--actions", default="shell,exec", help="comma list of shell,exec,sftp-read,sftp-write,forward")
    p.add_argument("--until", help="ISO 8601 end of validity")
    p.add_argument("--from", dest="valid_from", help="ISO 8601 start of validity")
    p.add_argument("--min-level", type=_level)
    command(grant, "list", cmd_grant_list, "list grants", listing)
    p = command(grant, "revoke", cmd_grant_revoke, "revoke a grant (live sessions under it end)")
    p.add_argument("id", type=int)

    sessions = sub.add_parser("sessions", help="sessions").add_subparsers(dest="sub", required=True,
                                                                          parser_class=_Parser)
    p = command(sessions, "list", cmd_sessions_list, "list sessions, newest first", listing)
    p.add_argument("--limit", type=int, default=1000)
    p = command(sessions, "kill", cmd_sessions_kill, "end a live session (on whichever node runs it)")
    p.add_argument("session_id")
    p.add_argument("--reason", default="no reason given")

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="sub", required=True,
                                                                      parser_class=_Parser)
    p = command(token, "create", cmd_token_create, "create a scoped, expiring API token", listing)
    p.add_argument("--user", required=True)
    p.add_argument("--scope", required=True, help="comma list of me, audit:read, audit:write, admin:read, admin:write")
    p.add_argument("--ttl", required=True, help="lifetime: 30m, 12h, 90d (at most 365d)")
    p.add_argument("--label")
    command(token, "list", cmd_token_list, "list API tokens", listing)
    p = command(token, "revoke", cmd_token_revoke, "revoke an API token")
    p.add_argument("id", type=int)

    recording = sub.add_parser("recording", help="recordings").add_subparsers(dest="sub", required=True,
                                                                              parser_class=_Parser)
    p = command(recording, "export", cmd_recording_export, "verify and write a plain asciicast v2 file")
    p.add_argument("session_id")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--force", action="store_true", help="export the verifiable part of a damaged recording")
    p = command(recording, "verify", cmd_recording_verify, "verify recordings (chain, signature)", listing)
    p.add_argument("session_id", nargs="?")
    p.add_argument("--all", action="store_true")

    p = command(sub, "replay", cmd_replay, "play a recorded session in this terminal")
    p.add_argument("session_id")
    p.add_argument("--speed", type=_float, default=1.0)
    p.add_argument("--from", dest="start", type=_float, default=0.0, metavar="SECONDS",
                   help="start at this time (from the nearest keyframe before it)")

    audit = sub.add_parser("audit", help="audit log").add_subparsers(dest="sub", required=True,
                                                                     parser_class=_Parser)
    p = command(audit, "list", cmd_audit_list, "list audit events, newest first", listing)
    p.add_argument("--type", help="only events of this type (prefix match)")
    p.add_argument("--limit", type=int, default=200)
    command(audit, "verify", cmd_audit_verify, "verify the audit hash chain (and its anchors)", listing)
    from bastion.records_cli import register_cli as register_records

    register_records(sub, command, listing)
    from bastion.search.cli import register_cli as register_search

    register_search(sub, command, listing)
    from bastion.publish.cli import register_cli as register_datasets

    register_datasets(sub, command, listing)
    from bastion.globalpolicy_cli import register_cli as register_policy

    register_policy(sub, command, listing)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BastionError as exc:
        print(f"bastion: error: {exc.safe_message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
