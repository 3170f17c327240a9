"""``edgesched infer``: send one inference request to the daemon and print the answer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import ClientError, ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "infer", help="send one inference request to the daemon",
        description="Run MODEL on the daemon. --input is a .npy file or a .json file (a nested "
                    "list, or an object mapping input names to nested lists); give NAME=FILE "
                    "for models with several inputs. Values are cast to the model's datatype.")
    p.add_argument("model")
    p.add_argument("--input", action="append", required=True, metavar="[NAME=]FILE",
                   help=".npy or .json (repeat for several inputs)")
    p.add_argument("--priority", type=int, default=0, help="1 is the highest; 0 the default")
    p.add_argument("--timeout-us", type=int, default=None, help="deadline in microseconds")
    p.add_argument("--socket", default=None, help="daemon socket "
                   "(default /run/edgesched/edgesched.sock)")
    p.add_argument("--lane", action="store_true",
                   help="send through the daemon's priority lane, the socket named after "
                        "--socket (edgesched.sock -> edgesched-priority.sock)")
    p.add_argument("--json-data", action="store_true",
                   help="send and receive tensors as JSON instead of binary")
    p.add_argument("--output", type=Path, default=None, metavar="OUT.npz",
                   help="also save the output tensors to an .npz file")
    p.set_defaults(func=run)


def _load(path: Path) -> Any:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: input file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the input ({exc})") from None
    raise ConfigError(f"{path}: expected a .npy or .json file")


def build_inputs(specs: list[str], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Map ``[NAME=]FILE`` arguments onto the model's inputs, cast to its datatypes."""
    from edgesched.client import DTYPES

    model_inputs = {t["name"]: t for t in meta["inputs"]}
    raw: dict[str, Any] = {}
    for spec in specs:
        name, sep, file = spec.rpartition("=")
        if not sep or name not in model_inputs:
            name, file = "", spec
        value = _load(Path(file))
        if isinstance(value, dict) and not name:
            raw.update(value)
        elif name:
            raw[name] = value
        elif len(model_inputs) == 1:
            raw[next(iter(model_inputs))] = value
        else:
            raise ConfigError(f"model {meta['name']!r} has inputs "
                              f"{', '.join(model_inputs)}: give NAME=FILE")
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        t = model_inputs.get(name)
        if t is None:
            raise ConfigError(f"model {meta['name']!r} has no input {name!r} "
                              f"(inputs: {', '.join(model_inputs)})")
        arr = np.asarray(value).astype(DTYPES[t["datatype"]], copy=False)
        if arr.size == int(np.prod(t["shape"])):
            arr = arr.reshape(t["shape"])
        out[name] = arr
    return out


def run(args: argparse.Namespace) -> int:
    from edgesched.client import DEFAULT_SOCKET, Client
    from edgesched.server.config import ServerSection, priority_socket_path

    sock = args.socket or DEFAULT_SOCKET
    if args.lane:
        sock = str(priority_socket_path(ServerSection(socket=sock)))
    with Client(sock) as client:
        try:
            meta = client.model_metadata(args.model)
            inputs = build_inputs(args.input, meta)
            result = client.infer(args.model, inputs, priority=args.priority,
                                  timeout_us=args.timeout_us, binary=not args.json_data)
        except ClientError as exc:
            doc = {"error": exc.reason, "status": exc.status, "outcome": exc.outcome}
            print(json.dumps(doc), file=sys.stderr)
            return 1
    summary = {
        "model": result.model, "id": result.request_id, "parameters": result.parameters,
        "outputs": {name: {"shape": list(a.shape), "dtype": str(a.dtype),
                           "data": a.ravel()[:16].tolist(), "truncated": a.size > 16}
                    for name, a in result.outputs.items()},
    }
    print(json.dumps(summary, indent=1))
    if args.output is not None:
        arrays: dict[str, Any] = {k.replace("/", "_"): v for k, v in result.outputs.items()}
        np.savez(args.output, **arrays)
    return 0
