"""CLI commands for the global policy: show it, change a setting at runtime, reset it to bastion.toml."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Callable

EXIT_OK = 0


def _cli() -> Any:
    # bastion.cli imports this module to register the commands: import it back only when a command runs.
    from bastion import cli

    return cli


async def _with_policy(args: argparse.Namespace, work: Callable[[Any], Any], load: bool = True) -> Any:
    from bastion.services import Services

    services = await Services.open(_cli()._config(args), load_policy=load)
    try:
        return await work(services.global_policy)
    finally:
        await services.close()


def cmd_policy_show(args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_policy(args, lambda policy: _values(policy)))
    _cli()._print(rows, args.json, ["section", "name", "value", "origin", "file_value", "updated_by"])
    return EXIT_OK


async def _values(policy: Any) -> list[dict[str, Any]]:
    return [value.as_dict() for value in policy.values()]


def cmd_policy_set(args: argparse.Namespace) -> int:
    cli = _cli()
    result = asyncio.run(_with_policy(args, lambda policy: policy.set(args.name, args.value, cli._actor(), "local")))
    print(f"{result.name} = {result.value!r} (applies to running gateways within seconds; "
          f"`bastion policy reset {result.name}` returns to bastion.toml)")
    return EXIT_OK


def cmd_policy_reset(args: argparse.Namespace) -> int:
    cli = _cli()
    # Not loaded first: reset is how an operator recovers from a stored value the gateway refuses to start with.
    result = asyncio.run(_with_policy(args, lambda policy: policy.reset(args.name, cli._actor(), "local"),
                                      load=False))
    print(f"{result.name} = {result.value!r} ({result.origin})")
    return EXIT_OK


def register_cli(sub: Any, command: Callable, listing: argparse.ArgumentParser) -> None:
    from bastion.cli import _Parser

    policy = sub.add_parser("policy", help="global policy (levels, lockout, timeouts, recording)")\
        .add_subparsers(dest="sub", required=True, parser_class=_Parser)
    command(policy, "show", cmd_policy_show, "the global policy in force and where each value comes from", listing)
    p = command(policy, "set", cmd_policy_set, "change a global policy setting now (audited; wins over bastion.toml)")
    p.add_argument("name")
    p.add_argument("value")
    p = command(policy, "reset", cmd_policy_reset, "drop a runtime change: the bastion.toml value applies again")
    p.add_argument("name")
