"""``aip whoami`` and ``aip tokens``: who you are to the platform, and tokens for the people of a team."""

from __future__ import annotations

import argparse
import sys

from ai_platform.cli.output import add_output, chosen_format, print_value

TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _client():  # noqa: ANN202 - ai_platform.client.Client
    from ai_platform.client import Client

    return Client()


def ttl(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds."""
    unit = text[-1:] if text[-1:] in TTL_UNITS else "s"
    number = text[:-1] if text[-1:] in TTL_UNITS else text
    try:
        seconds = float(number) * TTL_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 3600 (seconds), got {text!r}") \
            from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be above 0, got {text!r}")
    return seconds


def cmd_whoami(args: argparse.Namespace) -> int:
    who, fmt = _client().whoami(), chosen_format(args)
    if fmt in ("json", "yaml"):
        print_value(who, fmt)
    elif who["open"]:
        print(f"{who['subject']} ({who['role']}): this platform checks no credentials (no AIP_TOKEN or AIP_AUTH_KEY)")
    else:
        expires = f", until {who['expires_at']}" if who["expires_at"] else ""
        print(f"{who['subject']} ({who['role']}{expires})")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from ai_platform.core.auth import Role

    try:
        Role.named(args.role)
    except ValueError as exc:
        print(f"aip tokens create: {exc}", file=sys.stderr)
        return 2
    token = _client().create_token(args.name, args.role, args.ttl)
    print(token)
    print(f"a token for {args.name} ({args.role}), valid {args.ttl / 86400:g} days: they set AIP_TOKEN to it (or "
          f"enter it in the page's settings)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    whoami = sub.add_parser("whoami", help="who the platform takes you for: name, role, expiry")
    add_output(whoami)
    whoami.set_defaults(func=cmd_whoami)
    tokens = sub.add_parser("tokens", help="signed tokens for people, each with a role (admin, or with AIP_AUTH_KEY)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="print a new token")
    create.add_argument("--name", required=True, help="who it is for (their name in the audit trail)")
    create.add_argument("--role", required=True, help="viewer (read, predict), editor (also write and run), or admin")
    create.add_argument("--ttl", type=ttl, default=30 * 86400, help="how long it is valid: 30d, 12h, 90m, 3600 "
                                                                    "(default 30d; at most a year)")
    tokens.set_defaults(func=cmd_tokens)
