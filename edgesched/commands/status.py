"""``edgesched status``: print the daemon's status (queue, models, policy, board, energy)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
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
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for the daemon to be ready before asking (for "
                        "scripts that have just started it; 0: ask at once)")
    p.set_defaults(func=run)


def wait_ready(socket_path: str, wait_s: float, *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll the daemon's readiness until it answers ready or ``wait_s`` has passed."""
    from edgesched.client import Client

    deadline = clock() + wait_s
    while True:
        try:
            with Client(socket_path, timeout_s=max(0.1, min(2.0, wait_s))) as client:
                if client.ready():
                    return True
        except (ClientError, OSError):
            pass
        if clock() >= deadline:
            return False
        sleep(0.1)


def run(args: argparse.Namespace) -> int:
    from edgesched.client import DEFAULT_SOCKET, Client

    if args.wait < 0:
        print("edgesched status: --wait must be >= 0 seconds", file=sys.stderr)
        return 2
    path = args.socket or DEFAULT_SOCKET
    if args.wait > 0 and not wait_ready(path, args.wait):
        print(f"edgesched status: the daemon on {path} was not ready within {args.wait:g} s",
              file=sys.stderr)
        return 1
    with Client(path, timeout_s=10.0) as client:
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
