"""CLI commands for audit export and anchoring, legal hold, retention, and backup/restore."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any, Callable

from bastion.errors import Conflict, UsageError

EXIT_OK, EXIT_ERROR = 0, 1


def _cli() -> Any:
    # bastion.cli imports this module to register the commands: import it back only when a command runs.
    from bastion import cli

    return cli


def _read_passphrase(args: argparse.Namespace, confirm: bool) -> str:
    if args.passphrase_stdin:
        return _cli()._read_secret_stdin("passphrase")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the passphrase: use --passphrase-stdin")
    passphrase = getpass.getpass("backup passphrase: ")
    if confirm and getpass.getpass("again: ") != passphrase:
        raise UsageError("the passphrases differ")
    return passphrase


def cmd_audit_export(args: argparse.Namespace) -> int:
    from bastion.audit.export import export, parse_since

    cli = _cli()
    since = parse_since(args.since)

    async def work(services: Any) -> int:
        lines = export(services, args.format, since, actor=cli._actor())
        if args.output is None:
            count = 0
            async for line in lines:
                sys.stdout.write(line)
                count += 1
            sys.stdout.flush()
            return count
        return await _write_export(Path(args.output), lines)

    count = asyncio.run(cli._with_services(args, work))
    if args.output is not None:
        print(f"{count} events written to {args.output}", file=sys.stderr)
    return EXIT_OK


async def _write_export(path: Path, lines: Any) -> int:
    """The export appears whole or not at all, readable by the owner only (it is the audit trail)."""
    if path.exists():
        raise Conflict(f"{path} exists; refusing to overwrite it")
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            async for line in lines:
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise
    return count


def cmd_audit_anchor(args: argparse.Namespace) -> int:
    from bastion.audit.anchor import anchor_now

    cli = _cli()
    anchor = asyncio.run(cli._with_services(args, anchor_now))
    cli._print(anchor, args.json)
    return EXIT_OK


def _hold(hold: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from bastion.retention import set_legal_hold

        cli = _cli()
        result = asyncio.run(cli._with_services(args, lambda s: set_legal_hold(s, args.session_id, hold,
                                                                                actor=cli._actor())))
        if args.json:
            cli._print(result, True)
        else:
            state = "on legal hold" if hold else "released from legal hold"
            print(f"session {result['session_id']} {state}" + ("" if result["changed"] else " (unchanged)"))
        return EXIT_OK

    return command


def cmd_recording_retention(args: argparse.Namespace) -> int:
    from bastion.retention import apply_retention

    cli = _cli()
    rows = asyncio.run(cli._with_services(args, lambda s: apply_retention(s, dry_run=args.dry_run,
                                                                          actor=cli._actor())))
    cli._print(rows, args.json, ["session_id", "target", "ended_at", "retention_days", "action"])
    return EXIT_OK


def cmd_backup_create(args: argparse.Namespace) -> int:
    from bastion.backup import create_backup

    cli = _cli()
    config = cli._config(args)
    passphrase = _read_passphrase(args, confirm=True)
    summary = asyncio.run(create_backup(config, args.file, passphrase, actor=cli._actor()))
    if args.json:
        cli._print(summary, True)
    else:
        print(f"backup written to {summary['file']} ({summary['size']} bytes, {summary['rows']} rows, "
              f"{summary['files']} files; sha256 {summary['sha256']})")
        if summary["missing"]:
            print(f"warning: {summary['missing']} recording file(s) were missing and are not in the backup",
                  file=sys.stderr)
    return EXIT_OK


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from bastion.backup import restore_backup

    cli = _cli()
    if not getattr(args, "data_dir", None):
        raise UsageError("give the new data directory with --data-dir NEW")
    target = cli._data_dir(args)
    passphrase = _read_passphrase(args, confirm=False)
    summary = asyncio.run(restore_backup(args.file, passphrase, target, args.database_url or "",
                                         actor=cli._actor()))
    if args.json:
        cli._print(summary, True)
    else:
        print(f"restored {summary['rows']} rows and {summary['files']} files into {summary['data_dir']} "
              f"({summary['database']}; backup of {summary['backup_created']} from {summary['backup_node']})")
        print("next: bastion audit verify and bastion recording verify --all, with --data-dir "
              f"{summary['data_dir']}")
    return EXIT_OK


def _subcommands(sub: Any, name: str, help: str) -> Any:
    """The subcommand group `name` under `sub`, reusing the one build_parser made if it exists."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
    for action in parser._actions:  # argparse offers no public way back to a parser's subparsers
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="sub", required=True, parser_class=type(parser))


def register_cli(sub: Any, command: Callable[..., Any], listing: argparse.ArgumentParser) -> None:
    """Add audit export/anchor, recording hold/release/retention and backup create/restore (idempotent)."""
    audit = _subcommands(sub, "audit", "audit log")
    if "export" not in audit.choices:
        p = command(audit, "export", cmd_audit_export, "export audit events as JSON lines or CEF")
        p.add_argument("--format", required=True, choices=["jsonl", "cef"])
        p.add_argument("--since", metavar="T", help="only events at or after this ISO 8601 time (UTC by default)")
        p.add_argument("-o", "--output", metavar="FILE", help="write here (0600) instead of standard output")
    if "anchor" not in audit.choices:
        command(audit, "anchor", cmd_audit_anchor, "anchor the audit chain head in the anchor file now", listing)

    recording = _subcommands(sub, "recording", "recordings")
    if "hold" not in recording.choices:
        p = command(recording, "hold", _hold(True), "put a session on legal hold (never shredded)", listing)
        p.add_argument("session_id")
    if "release" not in recording.choices:
        p = command(recording, "release", _hold(False), "release a session from legal hold", listing)
        p.add_argument("session_id")
    if "retention" not in recording.choices:
        p = command(recording, "retention", cmd_recording_retention,
                    "crypto-shred recordings past their retention (not those on legal hold)", listing)
        p.add_argument("--dry-run", action="store_true", help="list what would be shredded, change nothing")

    if "backup" not in sub.choices:
        backup = _subcommands(sub, "backup", "encrypted backups")
        p = command(backup, "create", cmd_backup_create,
                    "write one encrypted file: database, keys, config, anchors, recordings", listing)
        p.add_argument("file")
        p.add_argument("--passphrase-stdin", action="store_true", help="read the passphrase from standard input")
        p = command(backup, "restore", cmd_backup_restore,
                    "restore a backup into a new, empty data directory (--data-dir NEW)", listing)
        p.add_argument("file")
        p.add_argument("--passphrase-stdin", action="store_true", help="read the passphrase from standard input")
        p.add_argument("--database-url", help="restore into this empty PostgreSQL database instead of SQLite")
