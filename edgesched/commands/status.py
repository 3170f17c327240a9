"""``edgesched status``: print the daemon's status (queue, models, policy, board, energy)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgesched.errors import ClientError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status", help="print the daemon's status as JSON",
        description="Print the daemon's status (queue, models, policy, board, energy) as JSON, "
                    "or its Prometheus metrics. Exit status: 0 printed, 1 the daemon answered "
                    "with an error or could not be reached.")
    p.add_argument("--socket", default=None, help="daemon socket "
                   "(default /run/edgesched/edgesched.sock)")
    p.add_argument("--metrics", action="store_true", help="print /metrics (Prometheus) instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.client import DEFAULT_SOCKET, Client

    with Client(args.socket or DEFAULT_SOCKET, timeout_s=10.0) as client:
        try:
            if args.metrics:
                sys.stdout.write(client.metrics())
                return 0
            doc = client.status()
        except ClientError as exc:
            print(f"edgesched status: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(doc, indent=1))
    return 0
