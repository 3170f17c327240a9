"""The Open Inference Protocol's tensor encoding, shared by the client and the server.

A tensor is a JSON object ``{"name", "datatype", "shape"}`` plus either ``"data"`` (a flat JSON
list) or, with the binary tensor data extension, ``"parameters": {"binary_data_size": N}`` and
its raw bytes appended after the JSON header, in order.

Binary tensor data is handed on as byte views of the arrays (:func:`tensor_bytes`), not copied
into new ``bytes``: the sender writes them to its socket as they are, and a 196 KB input that is
copied twice costs more than the rest of a request's encoding together.

JSON is written by orjson (:func:`json_bytes`; bodies are parsed by orjson too): a tensor's
``"data"`` is handed to it as the flat numpy array (``OPT_SERIALIZE_NUMPY`` writes the numbers
from the array's own memory, no Python list of numbers), and a body is parsed from its bytes
without decoding them to ``str`` first. Floats are written in their shortest form for their
own type (a float32 as the shortest decimal that reads back as the same float32); a NaN or an
infinity in an output is written as ``null`` (JSON has no such numbers).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import orjson

_WIRE_ORDER = ("<", "|", "=") if sys.byteorder == "little" else ("<", "|")
"""Byte orders of a dtype whose bytes already are in the wire's order."""


def tensor_bytes(arr: np.ndarray) -> memoryview:
    """``arr``'s bytes in C order and little-endian (the wire's order), as a flat byte view:
    no copy for a contiguous little-endian array (the usual case)."""
    if arr.dtype.byteorder not in _WIRE_ORDER:
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr.reshape(-1).view(np.uint8).data


_ORJSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_ORJSON_KINDS = frozenset("biuf")
"""numpy kinds orjson writes natively (bool, signed and unsigned integers, floats)."""


def _plain(value: Any) -> Any:
    """What the standard library's encoder cannot write: numpy arrays and scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_bytes(doc: Any) -> bytes:
    """``doc`` as compact UTF-8 JSON. orjson writes it, numpy arrays included; a document it
    refuses (integers beyond 64 bits, keys that are not strings) is written by the standard
    library instead."""
    try:
        return orjson.dumps(doc, option=_ORJSON_NUMPY)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(doc, separators=(",", ":"), default=_plain).encode()


def json_data(arr: np.ndarray) -> Any:
    """A tensor's ``"data"`` for :func:`json_bytes`: the flat array itself (C order, native byte
    order) when orjson writes its dtype natively, else a Python list."""
    if arr.dtype.kind not in _ORJSON_KINDS:
        return arr.ravel().tolist()
    flat = np.ascontiguousarray(arr).reshape(-1)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat


def encode_tensor(name: str, arr: np.ndarray, datatype: str, binary: bool,
                  blobs: list[memoryview]) -> dict[str, Any]:
    """The tensor's JSON object; with ``binary`` a byte view of its data is appended to
    ``blobs`` (the array must not change until they are sent). Without it ``"data"`` is the
    flat array (:func:`json_data`): write the object with :func:`json_bytes`."""
    doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if binary:
        raw = tensor_bytes(arr)
        doc["parameters"] = {"binary_data_size": raw.nbytes}
        blobs.append(raw)
    else:
        doc["data"] = json_data(arr)
    return doc
