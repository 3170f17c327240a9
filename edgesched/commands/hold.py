"""``edgesched hold``: hold a policy or a frequency floor for a while.

::

    edgesched hold performance --for 30s
    edgesched hold --min-khz 1200000 --for 10s --reason "camera burst"
    edgesched hold powersave            # until Ctrl-C

The command asks the daemon for a hold (``POST /v2/admin/holds``, an admin call: root or
``server.admin_group``), then keeps that connection open for the hold's duration, pinging the
daemon so that ``server.idle_timeout_s`` does not close it. The hold ends when its time is up,
on Ctrl-C or SIGTERM (released with ``DELETE /v2/admin/holds/{id}``), or when this process dies
(the daemon releases a hold whose connection closed). ``edgesched status`` lists the holds in
force; which one wins is described in :mod:`edgesched.server.holds`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from types import FrameType
from typing import Any

from edgesched.errors import ClientError

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*")
_UNIT_S = {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """``30s``, ``10m``, ``1h``, ``500ms`` or plain seconds (``1.5``) as seconds."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write it like 30s, 10m, "
                                         "1h, 500ms or a number of seconds")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a hold lasts more than 0 s")
    return seconds


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "hold", help="hold a policy or a frequency floor for a while",
        description="Hold a policy (performance, powersave, schedutil, learned:NAME ...) or a "
                    "frequency floor on every cluster for a while. The hold lasts while this "
                    "command runs: it ends after --for, on Ctrl-C, or when this process "
                    "ends. Needs root or membership of server.admin_group.")
    p.add_argument("policy", nargs="?", default="",
                   help="the policy spec to hold (default: none, only --min-khz)")
    p.add_argument("--min-khz", type=int, default=0,
                   help="frequency floor in kHz for every cluster, each clamped to its top "
                        "OPP (default 0: no floor)")
    p.add_argument("--for", dest="duration_s", type=parse_duration_s, default=None,
                   metavar="DURATION",
                   help="how long: 30s, 10m, 1h, 500ms (default: until Ctrl-C)")
    p.add_argument("--reason", default="", help="shown in `edgesched status` (default none)")
    p.add_argument("--socket", default=None,
                   help="daemon socket (default /run/edgesched/edgesched.sock)")
    p.set_defaults(func=run)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def run(args: argparse.Namespace) -> int:
    from edgesched.client import DEFAULT_SOCKET, Client

    if not args.policy and not args.min_khz:
        print("edgesched hold: give a policy (edgesched hold performance --for 30s) or a floor "
              "(edgesched hold --min-khz 1200000 --for 10s)", file=sys.stderr)
        return 2
    if args.min_khz < 0:
        print("edgesched hold: --min-khz must be >= 0", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {"reason": args.reason}
    if args.policy:
        doc["policy"] = args.policy
    if args.min_khz:
        doc["min_khz"] = args.min_khz
    if args.duration_s is not None:
        doc["seconds"] = args.duration_s
    answer: dict[str, Any] = {}
    old_term = signal.signal(signal.SIGTERM, _raise_stop)
    client = Client(args.socket or DEFAULT_SOCKET, timeout_s=30.0)
    try:
        try:
            status, _, data = client.request("POST", "/v2/admin/holds", json.dumps(doc).encode(),
                                             {"Content-Type": "application/json"})
        except ClientError as exc:
            print(f"edgesched hold: {exc}", file=sys.stderr)
            return 1
        answer = json.loads(data) if data else {}
        if status != 200:
            print(f"edgesched hold: refused ({status}): {answer.get('error', '')}",
                  file=sys.stderr)
            return 1
        what = " and ".join(x for x in (args.policy, f"a floor of {args.min_khz} kHz"
                                        if args.min_khz else "") if x)
        until = (f"for {args.duration_s:g} s" if args.duration_s is not None
                 else "until Ctrl-C")
        print(f"holding {what} {until} (hold {answer['id']}; running policy "
              f"{answer.get('policy_running')}); Ctrl-C releases it", flush=True)
        return _keep(client, answer, args.duration_s)
    except (KeyboardInterrupt, _Stop):
        return _release(client, answer)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        client.close()


def _keep(client: Any, answer: dict[str, Any], duration_s: float | None) -> int:
    """Keep the connection (and so the hold) until the hold's end, pinging the daemon."""
    ping_s = max(0.5, float(answer.get("keepalive_s") or 20.0))
    end = time.monotonic() + duration_s if duration_s is not None else None
    while True:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            print(f"hold {answer['id']} ended", flush=True)
            return 0
        time.sleep(ping_s if left is None else min(ping_s, left))
        try:
            client.request("GET", "/v2/health/live")
        except ClientError as exc:
            print(f"edgesched hold: the daemon went away ({exc}); the hold is gone",
                  file=sys.stderr)
            return 1


def _release(client: Any, answer: dict[str, Any]) -> int:
    if "id" not in answer:  # stopped before the daemon answered: closing the connection
        return 130
    try:
        status, _, _ = client.request("DELETE", f"/v2/admin/holds/{answer['id']}")
    except (ClientError, OSError):
        status = 0  # the connection closing releases it as well
    print(f"hold {answer['id']} released" + ("" if status in (200, 404) else
                                             " (by closing the connection)"), flush=True)
    return 0
