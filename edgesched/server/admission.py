"""Admission: decode and validate an infer request against the model before it takes queue space.

Decoding follows the Open Inference Protocol (KServe v2) REST form, with Triton's binary tensor
data extension (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` /
``binary_data_output``) and schedule-policy parameters (``priority``: 1 is the highest, 0 the
default; ``timeout``: microseconds). Every failure raises :class:`AdmissionError` with the HTTP
status to answer and a reason that says what was wrong.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from edgesched.errors import AdmissionError
from edgesched.server.runner import LoadedModel, TensorSpec
from edgesched.server.shm import SharedMemoryUse, shared_input, shared_output, tensor_params
from edgesched.tensorwire import encode_tensor, json_bytes, tensor_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InferRequest:
    """A decoded, validated infer request."""

    model: str
    request_id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[tuple[str, bool], ...]
    """Output names to return, each with whether to return it as binary data."""
    priority: int
    """Resolved class, 1 (highest) .. levels."""
    timeout_us: int | None
    size_bytes: int


MAX_PARAM = 2**64 - 1
"""Largest ``priority``/``timeout`` accepted (Triton's are unsigned 64-bit)."""


def _bad(reason: str) -> AdmissionError:
    return AdmissionError(400, reason)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _int_param(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise _bad(f"parameter {key!r} must be an integer, got {_short(value)}")
    if value < 0:
        raise _bad(f"parameter {key!r} must be >= 0, got {_short(value)}")
    if value > MAX_PARAM:
        raise _bad(f"parameter {key!r} must be <= 2**64-1, got {_short(value)}")
    return int(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use finite numbers)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""One decoder for every request (``json.loads`` with an option builds a new one each call)."""


def _json_doc(raw: bytes) -> Any:
    """``json.loads(raw)`` without NaN and infinities; raises ValueError (UnicodeDecodeError,
    JSONDecodeError) or RecursionError as it does.

    orjson parses it (from the bytes, at library speed; it refuses NaN and infinities itself,
    and reads an integer beyond 64 bits as a float, which the checks then refuse as they refuse
    the integer). What orjson refuses is parsed again by the standard library, so that its
    verdict and its reason are the same as ever: a body in UTF-16 or UTF-32, a lone surrogate
    in a string, a literal like ``1e999`` (infinite: the finite-values check names the input),
    nesting deeper than orjson's 1024 levels."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


TENSOR_DOC_BYTES = 16 << 10
"""JSON bodies from this size on are parsed by :func:`_tensor_doc` first."""
_BUFFER_TYPES = {"FP16": "d", "FP32": "d", "FP64": "d",
                 "INT8": "i", "INT16": "i", "INT32": "i", "INT64": "i",
                 "UINT8": "u", "UINT16": "u", "UINT32": "u", "UINT64": "u"}
"""simdjson's ``as_buffer`` type for a datatype's ``data``: double, int64 or uint64."""
_BUFFER_DTYPES = {"d": np.dtype(np.float64), "i": np.dtype(np.int64), "u": np.dtype(np.uint64)}
_EXACT_INT_BOUND = 2.0 ** 53
_INT_BOUNDS: dict[np.dtype[Any], tuple[int, int]] = {}
"""Integer datatypes' (min, max), worked out once each."""
_PARSERS = threading.local()


def _parser(fresh: bool = False) -> Any:
    """This thread's simdjson parser (one per thread: a parser is not thread-safe)."""
    parser = None if fresh else getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    return parser


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _flat_data(datatype: Any, data: Any) -> Any:
    """An input's ``data`` (a simdjson array) as a flat numpy array straight from the parser
    (no Python number objects) when it is a flat array of numbers of ``datatype``'s kind; else
    as the Python list it is. The array holds exactly the values numpy reads from the list:
    integers for an integer datatype (floats make it a list, which admission refuses), doubles
    for a float one, and a list where an integer beyond 2**53 could round twice."""
    of_type = _BUFFER_TYPES.get(datatype) if isinstance(datatype, str) else None
    if of_type is not None:
        try:
            arr = np.frombuffer(data.as_buffer(of_type=of_type), dtype=_BUFFER_DTYPES[of_type])
        except (TypeError, ValueError, RuntimeError):  # mixed kinds, out of range, ...
            arr = None
        if arr is not None and arr.size == len(data) and not (
                of_type == "d" and arr.size and float(np.abs(arr).max()) >= _EXACT_INT_BOUND):
            return arr
    return data.as_list()


def _fields(obj: Any) -> list[tuple[str, Any]] | None:
    """A simdjson object's keys and lazy values; None when a key repeats (``obj[key]`` finds
    the first, where orjson keeps the last: such a body is left to it)."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    return [(k, obj[k]) for k in keys]


def _tensor_doc(raw: bytes) -> dict[str, Any] | None:
    """A JSON infer request parsed by simdjson, each input's ``data`` array read by
    :func:`_flat_data`; None when it is not a JSON object, a key repeats, or simdjson refuses
    anything in it (NaN, integers beyond 64 bits, lone surrogates, ...): :func:`_json_doc`
    then parses it as ever and gives its verdict. Nothing from the parser outlives the call
    (its next parse needs that)."""
    try:
        try:
            top = _parser().parse(raw)
        except RuntimeError:  # a value of the previous parse is still referenced somewhere
            top = _parser(fresh=True).parse(raw)
        fields = _fields(top) if isinstance(top, simdjson.Object) else None
        if fields is None:
            return None
        doc: dict[str, Any] = {}
        for key, value in fields:
            if key != "inputs" or not isinstance(value, simdjson.Array):
                doc[key] = _plain(value)
                continue
            items: list[Any] = []
            for item in value:
                if not isinstance(item, simdjson.Object):
                    items.append(_plain(item))
                    continue
                tensor = _fields(item)
                if tensor is None:
                    return None
                entry = {k: v if k == "data" and isinstance(v, simdjson.Array) else _plain(v)
                         for k, v in tensor}
                data = entry.get("data")
                if isinstance(data, simdjson.Array):
                    entry["data"] = _flat_data(entry.get("datatype"), data)
                items.append(entry)
            doc[key] = items
        return doc
    except (ValueError, TypeError, RuntimeError, RecursionError):  # UnicodeDecodeError too
        return None


def _check_finite(spec: TensorSpec, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise _bad(f"input {spec.name!r}: NaN or infinite values are not accepted")


def _json_tensor(spec: TensorSpec, data: Any) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise _bad(f"input {spec.name!r}: 'data' is not a rectangular array of numbers") from None
    want = spec.dtype
    if arr.dtype.kind == "f" and want.kind == "u":
        arr = _unsigned(spec, data, arr)
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and want.kind in "biu"):
        raise _bad(f"input {spec.name!r}: 'data' must hold {spec.datatype} values, got "
                   f"{arr.dtype.kind!r}-kind values")
    n = spec.count
    if arr.size != n:
        raise _bad(f"input {spec.name!r}: 'data' has {arr.size} elements, shape "
                   f"{list(spec.shape)} needs {n}")
    if want.kind in "iu" and arr.size:
        bounds = _INT_BOUNDS.get(want)
        if bounds is None:
            info = np.iinfo(want)
            bounds = _INT_BOUNDS[want] = (int(info.min), int(info.max))
        lo, hi = int(arr.min()), int(arr.max())
        if lo < bounds[0] or hi > bounds[1]:
            raise _bad(f"input {spec.name!r}: values {lo}..{hi} do not fit {spec.datatype}")
    if want.kind == "f" and arr.dtype != want:  # may overflow: refused as not finite
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want).reshape(spec.shape)
    else:
        out = arr.astype(want, copy=False).reshape(spec.shape)
    _check_finite(spec, out)
    return out


def _unsigned(spec: TensorSpec, data: Any, arr: np.ndarray) -> np.ndarray:
    """``data`` as the input's unsigned integers when it holds only integers (refused when
    they do not fit): numpy reads integers past 2**63 next to smaller ones as floats (int64 and
    uint64 meet in float64), which would lose UINT64 values' low bits. Else ``arr`` as it
    was."""
    try:
        obj = np.asarray(data, dtype=object)
    except (ValueError, TypeError, RecursionError):
        return arr
    flat = obj.ravel().tolist()
    if obj.shape != arr.shape or not all(type(v) is int for v in flat):
        return arr
    info = np.iinfo(spec.dtype)
    lo, hi = (min(flat), max(flat)) if flat else (0, 0)
    if lo < info.min or hi > info.max:
        raise _bad(f"input {spec.name!r}: values {lo}..{hi} do not fit {spec.datatype}")
    return np.asarray(flat, dtype=spec.dtype).reshape(obj.shape)


def _binary_tensor(spec: TensorSpec, blob: memoryview, offset: int, size: int) -> np.ndarray:
    if size != spec.size_bytes:
        raise _bad(f"input {spec.name!r}: binary_data_size {size} bytes, shape "
                   f"{list(spec.shape)} of {spec.datatype} needs {spec.size_bytes}")
    if offset + size > len(blob):
        raise _bad(f"input {spec.name!r}: binary data ends at byte {offset + size} but only "
                   f"{len(blob)} bytes follow the JSON header")
    arr = np.frombuffer(blob[offset:offset + size], dtype=spec.dtype).reshape(spec.shape)
    _check_finite(spec, arr)
    return arr


WIRE_CACHE_MAX = 64
"""JSON headers remembered per model (request plans and answer outputs together)."""
WIRE_CACHE_HEAD_BYTES = 4096
"""Longer JSON headers are decoded every time."""


@dataclass(frozen=True)
class _Plan:
    """What a request's JSON header says when every input comes as binary data: checked once,
    applied to each body that has the same header."""

    binary: tuple[tuple[str, TensorSpec, int, int], ...]
    """(name, spec, offset into the binary data, size) per input, in order."""
    blob_bytes: int
    request_id: str
    outputs: tuple[tuple[str, bool], ...]
    priority: int
    timeout_us: int | None


def parse_infer(body: bytes, header_length: int | None, model: LoadedModel, levels: int,
                default_priority: int, shm: SharedMemoryUse | None = None) -> InferRequest:
    """Decode ``body`` (JSON, or JSON header + binary tensors when ``header_length`` is given).

    ``shm``: the request's use of system shared memory (:mod:`edgesched.server.shm`), None
    when the extension is off; outputs bound for a region are left to it, not listed.

    A JSON header whose inputs all come as binary data is decoded and checked once per model
    (``model.wire_cache``, by its bytes and the queue's levels and default priority); a body with
    the same header then only has its binary data checked and viewed."""
    if header_length is None:
        return _parse_infer(body, body, memoryview(b""), None, model, levels, default_priority,
                            shm)
    if not 0 < header_length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {header_length} outside 1..{len(body)} "
                   "(the body length)")
    head = body[:header_length]
    blob = memoryview(body)[header_length:]
    if header_length > WIRE_CACHE_HEAD_BYTES:
        return _parse_infer(body, head, blob, header_length, model, levels, default_priority,
                            shm)
    key = (head, levels, default_priority)
    plan = model.wire_cache.get(key)
    if plan is None or len(blob) != plan.blob_bytes:  # decoded and checked in full
        binary: list[tuple[str, TensorSpec, int, int]] = []
        req = _parse_infer(body, head, blob, header_length, model, levels, default_priority,
                           shm, binary)
        if plan is None and binary and len(model.wire_cache) < WIRE_CACHE_MAX:
            model.wire_cache[key] = _Plan(tuple(binary), len(blob), req.request_id,
                                          req.outputs, req.priority, req.timeout_us)
        return req
    inputs: dict[str, np.ndarray] = {}
    for name, spec, offset, size in plan.binary:
        arr = np.frombuffer(blob[offset:offset + size], dtype=spec.dtype).reshape(spec.shape)
        _check_finite(spec, arr)
        inputs[name] = arr
    return InferRequest(model=model.name, request_id=plan.request_id, inputs=inputs,
                        outputs=plan.outputs, priority=plan.priority,
                        timeout_us=plan.timeout_us, size_bytes=len(body))


def _parse_infer(body: bytes, head: bytes, blob: memoryview, header_length: int | None,
                 model: LoadedModel, levels: int, default_priority: int,
                 shm: SharedMemoryUse | None,
                 plan_out: list[tuple[str, TensorSpec, int, int]] | None = None,
                 ) -> InferRequest:
    """:func:`parse_infer` in full. ``plan_out`` (when given) gets (name, spec, offset, size) of
    each input if every input came as binary data and no tensor names shared memory; else it
    is left empty."""
    plan: list[tuple[str, TensorSpec, int, int]] | None = [] if plan_out is not None else None
    try:
        doc = (_tensor_doc(head) if header_length is None and len(head) >= TENSOR_DOC_BYTES
               else None)
        if doc is None:
            doc = _json_doc(head)
    except RecursionError:
        raise _bad("malformed JSON request body: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, over-long integers
        hint = ""
        if header_length is None and b'"binary_data_size"' in head:
            hint = (f" (binary tensor data follows the JSON? then {HEADER_LENGTH} must give the "
                    "JSON's length)")
        raise _bad(f"malformed JSON request body: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise _bad("the request body must be a JSON object")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise _bad(f"'id' must be a string, got {_short(request_id)}")
    params = doc.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise _bad("'parameters' must be an object")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("'inputs' must be a non-empty list")
    specs = model.input_by_name
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise _bad("each entry of 'inputs' must be an object")
        name = item.get("name")
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None or not isinstance(name, str):
            raise _bad(f"model {model.name!r} has no input {_short(name)} (inputs: "
                       f"{', '.join(specs)})")
        if name in inputs:
            raise _bad(f"input {name!r} given twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            raise _bad(f"input {name!r}: datatype {_short(datatype)} does not match the model's "
                       f"{spec.datatype}")
        shape = item.get("shape")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or tuple(shape) != spec.shape):
            raise _bad(f"input {name!r}: shape {_short(shape)} does not match the model's "
                       f"{list(spec.shape)}")
        tparams = item.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise _bad(f"input {name!r}: 'parameters' must be an object")
        if tensor_params(tparams):  # a view of a registered shared memory region
            inputs[name] = shared_input(shm, spec, item, tparams)
            _check_finite(spec, inputs[name])
            plan = None
            continue
        size = tparams.get("binary_data_size")
        if size is not None:
            if "data" in item:  # which of the two would be the input is anyone's guess
                raise _bad(f"input {name!r}: give its values in 'data' or as binary data "
                           "(binary_data_size), not both")
            if header_length is None:
                raise _bad(f"input {name!r}: binary_data_size given but the request has no "
                           "Inference-Header-Content-Length header")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be an integer >= 0")
            inputs[name] = _binary_tensor(spec, blob, offset, size)
            if plan is not None:
                plan.append((name, spec, offset, size))
            offset += size
        elif "data" in item:
            inputs[name] = _json_tensor(spec, item["data"])
            plan = None
        else:
            raise _bad(f"input {name!r}: neither 'data' nor binary_data_size given")
    if offset != len(blob):
        raise _bad(f"{len(blob) - offset} bytes of binary data after the JSON header are not "
                   "claimed by any input's binary_data_size")
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise _bad(f"missing input(s) {', '.join(map(repr, missing))} of model {model.name!r}")

    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise _bad("parameter 'binary_data_output' must be true or false")
    out_names = model.output_by_name
    raw_outputs = doc.get("outputs")
    outputs: list[tuple[str, bool]] = []
    if raw_outputs is None or raw_outputs == []:  # none asked (Triton reads [] so too): all
        outputs = [(t.name, binary_all) for t in model.outputs]
    else:
        if not isinstance(raw_outputs, list):
            raise _bad("'outputs' must be a list")
        for item in raw_outputs:
            oname = item.get("name") if isinstance(item, dict) else None
            if oname not in out_names:
                raise _bad(f"model {model.name!r} has no output {_short(oname)} (outputs: "
                           f"{', '.join(t.name for t in model.outputs)})")
            oparams = item.get("parameters") or {}
            if tensor_params(oparams):
                shared_output(shm, out_names[str(oname)], oparams)
                plan = None
                continue
            binary = oparams.get("binary_data", binary_all) if isinstance(oparams, dict) else None
            if not isinstance(binary, bool):
                raise _bad(f"output {oname!r}: 'binary_data' must be true or false")
            outputs.append((str(oname), binary))

    priority = _int_param(params, "priority") or 0
    if priority > levels:
        raise _bad(f"priority {priority} outside 0..{levels} (1 is the highest, 0 the default)")
    timeout_us = _int_param(params, "timeout") or None
    if plan and plan_out is not None:
        plan_out.extend(plan)
    return InferRequest(model=model.name, request_id=request_id, inputs=inputs,
                        outputs=tuple(outputs), priority=priority or default_priority,
                        timeout_us=timeout_us, size_bytes=len(body))


def check_deadline(req: InferRequest, service_s: float, margin: float, status: int) -> None:
    """Refuse a request whose timeout is shorter than the model's service time at top speed."""
    if req.timeout_us is None:
        return
    need_us = service_s * 1e6 * margin
    if req.timeout_us < need_us:
        raise AdmissionError(status, f"deadline cannot be met: timeout {req.timeout_us} us is "
                             f"shorter than model {req.model!r}'s service time at the highest "
                             f"frequency, about {math.ceil(need_us)} us")


def encode_response_parts(model: LoadedModel, request_id: str,
                          results: Mapping[str, np.ndarray], outputs: tuple[tuple[str, bool], ...],
                          parameters: Mapping[str, Any],
                          shared: list[dict[str, Any]] | None = None,
                          ) -> tuple[bytes, list[memoryview]]:
    """The response's JSON (the header, when binary outputs follow it) and byte views of the
    binary outputs, in order (the result arrays must not change until they are sent).
    ``shared``: the docs of the outputs written to shared memory (no data), listed first."""
    if not shared and outputs:
        answer = _binary_answer(model, request_id, results, outputs, parameters)
        if answer is not None:
            return answer
    specs = model.output_by_name
    out_docs: list[dict[str, Any]] = list(shared) if shared else []
    blobs: list[memoryview] = []
    for name, binary in outputs:
        out_docs.append(encode_tensor(name, results[name], specs[name].datatype, binary, blobs))
    head = json_bytes({"model_name": model.name, "model_version": "1", "id": request_id,
                       "parameters": dict(parameters), "outputs": out_docs})
    return head, blobs


def _binary_answer(model: LoadedModel, request_id: str, results: Mapping[str, np.ndarray],
                   outputs: tuple[tuple[str, bool], ...], parameters: Mapping[str, Any],
                   ) -> tuple[bytes, list[memoryview]] | None:
    """:func:`encode_response_parts` when every output goes as binary data: the JSON around
    ``id`` and ``parameters`` is written once per model and list of outputs (the same bytes as
    writing the whole document each time). None: write it the general way."""
    key = ("answer", outputs)
    cached = model.wire_cache.get(key)
    if cached is None:
        if not all(binary for _, binary in outputs) or len(model.wire_cache) >= WIRE_CACHE_MAX:
            return None
        specs = model.output_by_name
        docs = [{"name": name, "datatype": specs[name].datatype,
                 "shape": list(results[name].shape),
                 "parameters": {"binary_data_size": results[name].nbytes}}
                for name, _ in outputs]
        try:
            prefix = orjson.dumps({"model_name": model.name, "model_version": "1"})
            tail = orjson.dumps(docs)
        except TypeError:
            return None
        shapes = tuple((name, results[name].shape, results[name].dtype) for name, _ in outputs)
        cached = (prefix[:-1] + b',"id":', b',"outputs":' + tail + b"}", shapes)
        model.wire_cache[key] = cached
    prefix, suffix, shapes = cached
    blobs: list[memoryview] = []
    for name, shape, dtype in shapes:
        arr = results[name]
        if arr.shape != shape or arr.dtype != dtype:
            return None
        blobs.append(tensor_bytes(arr))
    try:
        doc = parameters if type(parameters) is dict else dict(parameters)
        middle = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        head = b"".join((prefix, orjson.dumps(request_id), b',"parameters":', middle, suffix))
    except TypeError:  # what orjson refuses is written by the standard library, all of it
        return None
    return head, blobs


def encode_response(model: LoadedModel, request_id: str, results: Mapping[str, np.ndarray],
                    outputs: tuple[tuple[str, bool], ...], parameters: Mapping[str, Any],
                    ) -> tuple[bytes, int | None]:
    """The response body in one piece, and the JSON header's length when binary outputs
    follow it."""
    head, blobs = encode_response_parts(model, request_id, results, outputs, parameters)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
