"""`bastion search`: sessions where a command was typed or text was shown, and the moment to replay."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Callable

from bastion.search import MAX_LIMIT, MAX_SESSIONS_SCANNED

TEXT_WIDTH = 100


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to {MAX_LIMIT}")
    return int(text)


def _offset(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:06.3f}"


def cmd_search(args: argparse.Namespace) -> int:
    from bastion.cli import EXIT_OK, _actor, _print, _with_services
    from bastion.search.index import parse_since, search_sessions

    since = parse_since(args.since)
    outcome = asyncio.run(_with_services(args, lambda services: search_sessions(
        services, args.text, user=args.user, target=args.target, since=since, limit=args.limit, actor=_actor())))
    if not outcome.complete:
        print(f"note: only the newest {MAX_SESSIONS_SCANNED} sessions were searched; "
              "narrow with --user, --target or --since", file=sys.stderr)
    if args.json:
        _print(outcome.hits, True)
        return EXIT_OK
    rows = [{"time": hit["time"][:19].replace("T", " "), "user": hit["user"],
             "target": f"{hit['account']}@{hit['target']}", "session": hit["session_id"],
             "offset": _offset(hit["offset"]), "kind": hit["kind"],
             "text": hit["text"] if len(hit["text"]) <= TEXT_WIDTH else hit["text"][:TEXT_WIDTH - 1] + "\u2026"}
            for hit in outcome.hits]
    _print(rows, False, ["time", "user", "target", "session", "offset", "kind", "text"])
    return EXIT_OK


def register_cli(sub: Any, command: Callable[..., Any], listing: argparse.ArgumentParser) -> None:
    """Add `bastion search` to the parser (`command` and `listing` as in bastion.cli.build_parser)."""
    p = command(sub, "search", cmd_search,
                "find sessions by a command typed or by output text (case-insensitive substring)", listing)
    p.add_argument("text", help="the text to find")
    p.add_argument("--user", help="only sessions of this user")
    p.add_argument("--target", help="only sessions to this target")
    p.add_argument("--since", help="only sessions started at or after this ISO 8601 time (UTC if no zone)")
    p.add_argument("--limit", type=_limit, default=50, help=f"at most this many hits (1-{MAX_LIMIT}, default 50)")
