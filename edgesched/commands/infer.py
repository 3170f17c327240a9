"""``edgesched infer``: send one inference request to the daemon and print the answer.

Inputs are checked against the model's metadata before sending, as the daemon's admission
(:mod:`edgesched.server.admission`) checks them: the model's shape exactly, numbers of a kind its
datatype holds. The exit status tells an answer in time (0) from a late one (3), a refusal (1)
and bad arguments (2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import ClientError, ConfigError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_LATE = 3
EXIT_STATUS = (f"Exit status: {EXIT_OK} answered in time; {EXIT_REFUSED} refused or failed (the "
               "daemon's error as JSON on stderr, or an input that does not match the model's "
               "shape and datatype, checked before sending as the daemon would); "
               f"{EXIT_USAGE} bad arguments or an unreadable input file; {EXIT_LATE} answered, "
               "but after the deadline (outcome late; the result is printed all the same).")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "infer", help="send one inference request to the daemon",
        description="Run MODEL on the daemon. --input is a .npy file (numpy.save) or a .json "
                    "file (a nested list, or an object mapping input names to nested lists); "
                    "give NAME=FILE for models with several inputs. Each input must have the "
                    "model's shape (see GET /v2/models/MODEL); values are converted to the "
                    "model's datatype when nothing is lost (integers to floats, float64 to "
                    "float32, integers that fit), never floats to integers.",
        epilog=EXIT_STATUS)
    p.add_argument("model", help="model name, as the daemon lists it")
    p.add_argument("--input", action="append", required=True, metavar="[NAME=]FILE",
                   help=".npy or .json (repeat for several inputs)")
    p.add_argument("--priority", type=int, default=0,
                   help="1 is the highest; 0 asks for the model's default class")
    p.add_argument("--timeout-us", type=int, default=None,
                   help="deadline in microseconds (default: none)")
    p.add_argument("--socket", default=None, help="daemon socket "
                   "(default: /run/edgesched/edgesched.sock)")
    p.add_argument("--lane", action="store_true",
                   help="send through the daemon's priority lane, the socket named after "
                        "--socket (edgesched.sock -> edgesched-priority.sock)")
    p.add_argument("--json-data", action="store_true",
                   help="send and receive tensors as JSON instead of binary")
    p.add_argument("--shm", action="store_true",
                   help="pass the tensors through system shared memory (a POSIX shared memory "
                        "object under /dev/shm, registered for this one request, unregistered "
                        "and removed afterwards); the daemon must have server.shared_memory on")
    p.add_argument("--output", type=Path, default=None, metavar="OUT.npz",
                   help="also save the output tensors to an .npz file (default: not saved)")
    p.set_defaults(func=run)


class InputMismatchError(ConfigError):
    """An input file's array does not fit the model's input (shape, datatype or values)."""


NPY_MAGIC = b"\x93NUMPY"

_KINDS = {"U": "text (strings)", "S": "bytes", "O": "Python objects", "c": "complex numbers",
          "M": "dates", "m": "time spans", "V": "structured records"}


def _not_npy(path: Path, head: bytes) -> ConfigError:
    """The error for a .npy file without the .npy header: say what the file seems to be."""
    if not head:
        what = "an empty file"
    elif head.startswith(b"PK"):
        what = "a zip archive (numpy.savez writes .npz; give one array saved with numpy.save)"
    else:
        try:
            head.decode("utf-8")
            what = "a text file"
        except UnicodeDecodeError:
            what = "a binary file of another format"
    return ConfigError(f"{path}: {what}, not a NumPy .npy array; expected a file written by "
                       "numpy.save (or give the values as a .json file of nested lists)")


def _load(path: Path) -> Any:
    if path.suffix not in (".npy", ".json"):
        raise ConfigError(f"{path}: expected a .npy or .json file")
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                head = f.read(64)
                if not head.startswith(NPY_MAGIC):
                    raise _not_npy(path, head)
                f.seek(0)
                try:
                    return np.load(f, allow_pickle=False)
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise ConfigError(f"{path}: holds Python objects (an object array); "
                                          "expected an array of numbers") from None
                    raise ConfigError(f"{path}: not a readable .npy array ({exc})") from None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file; expected JSON") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: input file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a .npy or .json file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the input ({exc.strerror or exc})") from None


def fit_input(name: str, value: Any, tensor: dict[str, Any], source: str) -> np.ndarray:
    """``value`` as the model's input ``tensor`` (its metadata: name, datatype, shape), checked
    as the daemon's admission checks a request: the shape must be the model's (no reshaping),
    values must be numbers of a kind the datatype holds (no floats into integers), integers
    must fit, floats must be finite. Raises InputMismatchError saying what was given and what
    the model expects."""
    from edgesched.client import DTYPES

    datatype = str(tensor["datatype"])
    want_shape = [int(d) for d in tensor["shape"]]
    want = DTYPES.get(datatype)
    where = f"{source}: input {name!r}"
    if want is None:
        raise InputMismatchError(f"{where}: the model's datatype {datatype} cannot be sent "
                                 "from a file")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InputMismatchError(f"{where}: not a rectangular array of numbers") from None
    if arr.dtype.kind not in "biuf":
        raise InputMismatchError(f"{where}: holds {_KINDS.get(arr.dtype.kind, arr.dtype.kind)} "
                                 f"(dtype {arr.dtype}); the model expects {datatype} numbers")
    if arr.dtype.kind == "f" and want.kind in "biu":
        raise InputMismatchError(f"{where}: dtype {arr.dtype} does not match the model's "
                                 f"{datatype} ({want}): floats are not cast to integers; give "
                                 f"{want} values")
    got_shape = list(arr.shape)
    if len(got_shape) != len(want_shape) or any(
            w >= 0 and g != w for g, w in zip(got_shape, want_shape, strict=True)):
        raise InputMismatchError(f"{where}: shape {got_shape} does not match the model's "
                                 f"{want_shape} (arrays are not reshaped or transposed; give "
                                 "one in the model's shape)")
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise InputMismatchError(f"{where}: values {lo}..{hi} do not fit the model's "
                                     f"{datatype} ({info.min}..{info.max})")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=False)
    if out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
        raise InputMismatchError(f"{where}: NaN or infinite values (or values too large for "
                                 f"{datatype}) are not accepted")
    return out


def build_inputs(specs: list[str], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Map ``[NAME=]FILE`` arguments onto the model's inputs, checked against its metadata."""
    model_inputs = {t["name"]: t for t in meta["inputs"]}
    raw: dict[str, tuple[Any, str]] = {}
    for spec in specs:
        name, sep, file = spec.rpartition("=")
        if not sep or name not in model_inputs:
            name, file = "", spec
        value = _load(Path(file))
        if isinstance(value, dict) and not name:
            raw.update((k, (v, file)) for k, v in value.items())
        elif name:
            raw[name] = (value, file)
        elif len(model_inputs) == 1:
            raw[next(iter(model_inputs))] = (value, file)
        else:
            raise ConfigError(f"model {meta['name']!r} has inputs "
                              f"{', '.join(model_inputs)}: give NAME=FILE")
    out: dict[str, np.ndarray] = {}
    for name, (value, file) in raw.items():
        t = model_inputs.get(name)
        if t is None:
            raise InputMismatchError(f"model {meta['name']!r} has no input {name!r} "
                                     f"(inputs: {', '.join(model_inputs)})")
        out[name] = fit_input(name, value, t, file)
    missing = [n for n in model_inputs if n not in out]
    if missing:
        raise InputMismatchError(f"model {meta['name']!r} also needs input(s) "
                                 f"{', '.join(map(repr, missing))}: give NAME=FILE for each")
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
            if args.shm:
                result = client.infer_shm(args.model, inputs, priority=args.priority,
                                          timeout_us=args.timeout_us)
            else:
                result = client.infer(args.model, inputs, priority=args.priority,
                                      timeout_us=args.timeout_us, binary=not args.json_data)
        except InputMismatchError as exc:
            print(f"edgesched infer: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except ClientError as exc:
            doc = {"error": exc.reason, "status": exc.status, "outcome": exc.outcome}
            print(json.dumps(doc), file=sys.stderr)
            return EXIT_REFUSED
        except OSError as exc:  # --shm: the shared memory object cannot be created
            print(f"edgesched infer: error: cannot create a shared memory object under "
                  f"/dev/shm ({exc.strerror or exc}); run without --shm", file=sys.stderr)
            return EXIT_REFUSED
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
    if result.parameters.get("outcome") == "late":
        print(f"edgesched infer: answered after the deadline (outcome late, timeout "
              f"{args.timeout_us} us); exit status {EXIT_LATE}", file=sys.stderr)
        return EXIT_LATE
    return EXIT_OK
