"""`bastion dataset ...`: the catalog from the command line (add, update, publish, grant, approvals)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Callable

from bastion.policy import DATASET_MODES
from bastion.publish.catalog import CLASSIFICATIONS
from bastion.publish.masking import PROFILES


def _run(args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    from bastion.cli import _actor, _with_services
    from bastion.publish.catalog import Catalog

    return asyncio.run(_with_services(args, lambda s: work(Catalog.from_services(s, actor=_actor(), source="local"))))


def _print(rows: Any, as_json: bool, columns: list[str] | None = None) -> None:
    from bastion.cli import _print as print_rows

    print_rows(rows, as_json, columns)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_add(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.add(args.name, args.path, args.classification, args.description, args.owner))
    if args.json:
        _print(result, True)
    else:
        total = sum(f["size"] for f in result["files"])
        print(f"dataset {args.name} added: version 1, {len(result['files'])} file(s), {_size(total)}, "
              f"{result['classification']}, unpublished")
        print(f"next: bastion dataset publish {args.name}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.update(args.name, args.path))
    if args.json:
        _print(result, True)
    else:
        print(f"dataset {args.name}: version {result['version']} with {len(result['files'])} file(s)")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.publish(args.name, args.valid_from, args.until))
    if args.json:
        _print(result, True)
    else:
        window = "".join([f" from {result['from']}" if result["from"] else "",
                          f" until {result['until']}" if result["until"] else ""])
        print(f"dataset {args.name} published{window}")
    return 0


def cmd_unpublish(args: argparse.Namespace) -> int:
    _run(args, lambda c: c.unpublish(args.name))
    print(f"dataset {args.name} unpublished")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _run(args, lambda c: c.list())
    _print(rows, args.json, ["name", "classification", "state", "version", "files", "size", "owner", "grants",
                             "until"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.show(args.name))
    if args.json:
        _print(result, True)
        return 0
    _print({k: v for k, v in result.items() if k not in ("files", "versions", "grants")}, False)
    print("\nfiles (current version):")
    _print(result["files"], False, ["path", "size", "media_type", "viewer", "sha256"])
    print("\nversions:")
    _print(result["versions"], False, ["version", "files", "size", "created_at", "created_by"])
    print("\ngrants:")
    _print(result["grants"], False, ["id", "subject", "mode", "state", "until", "max_downloads", "downloads",
                                     "min_level", "mask", "watermark"])
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.grant(args.name, user=args.user, group=args.group, mode=args.mode,
                                          until=args.until, max_downloads=args.max_downloads,
                                          min_level=args.min_level, mask=args.mask,
                                          watermark=not args.no_watermark))
    _print(result, args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _run(args, lambda c: c.revoke(args.grant_id))
    print(f"dataset grant {args.grant_id} revoked")
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    rows = _run(args, lambda c: c.requests(pending_only=args.pending))
    _print(rows, args.json, ["id", "dataset", "user", "status", "requested_at", "decided_by", "expires_at", "reason"])
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    result = _run(args, lambda c: c.decide(args.request_id, args.approve, args.reason))
    if args.json:
        _print(result, True)
    elif result["status"] == "approved":
        print(f"request {args.request_id} approved: {result['user']} may download {result['dataset']} once, "
              f"until {result['expires_at']}")
    else:
        print(f"request {args.request_id} refused")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a positive number")
    return int(text)


def _level(text: str) -> int:
    if text not in ("1", "2", "3"):
        raise argparse.ArgumentTypeError("must be 1, 2 or 3")
    return int(text)


def register_cli(sub: Any, command: Callable[..., argparse.ArgumentParser], listing: argparse.ArgumentParser) -> None:
    """Add `bastion dataset ...` to the top-level subcommands (`command` is build_parser's helper)."""
    from bastion.cli import _Parser

    dataset = sub.add_parser("dataset", help="published datasets").add_subparsers(dest="sub", required=True,
                                                                                  parser_class=_Parser)
    p = command(dataset, "add", cmd_add, "store a file (or each file of a folder) as a new, unpublished dataset",
                listing)
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--classification", choices=CLASSIFICATIONS, default="internal")
    p.add_argument("--description", default="")
    p.add_argument("--owner", metavar="USER", help="a user who may decide download requests for it")
    p = command(dataset, "update", cmd_update, "store a new version of a dataset from a file or folder", listing)
    p.add_argument("name")
    p.add_argument("path")
    p = command(dataset, "publish", cmd_publish, "make a dataset visible to its grantees", listing)
    p.add_argument("name")
    p.add_argument("--from", dest="valid_from", metavar="T", help="ISO 8601 start (default: now)")
    p.add_argument("--until", metavar="T", help="ISO 8601 end (default: open)")
    p = command(dataset, "unpublish", cmd_unpublish, "hide a dataset from everyone")
    p.add_argument("name")
    command(dataset, "list", cmd_list, "list datasets", listing)
    p = command(dataset, "show", cmd_show, "a dataset's files, versions and grants", listing)
    p.add_argument("name")
    p = command(dataset, "grant", cmd_grant, "grant a user or group view or download access", listing)
    p.add_argument("name")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--group")
    p.add_argument("--mode", required=True, choices=DATASET_MODES)
    p.add_argument("--until", metavar="T", help="ISO 8601 end of validity")
    p.add_argument("--max-downloads", type=_positive, metavar="N")
    p.add_argument("--min-level", type=_level, metavar="L", help="minimum authentication level (1-3)")
    p.add_argument("--mask", choices=PROFILES, default="none", help="masking profile for views")
    p.add_argument("--no-watermark", action="store_true", help="views without the per-viewer watermark")
    p = command(dataset, "revoke", cmd_revoke, "revoke a dataset grant")
    p.add_argument("grant_id", type=int)
    p = command(dataset, "requests", cmd_requests, "download requests, newest first", listing)
    p.add_argument("--pending", action="store_true", help="only those waiting for a decision")
    p = command(dataset, "decide", cmd_decide, "approve (one download, for publish.approval_minutes) or refuse",
                listing)
    p.add_argument("request_id", type=int)
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", dest="approve", action="store_true")
    verdict.add_argument("--refuse", dest="approve", action="store_false")
    p.add_argument("--reason", required=True)
