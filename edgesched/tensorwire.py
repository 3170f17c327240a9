"""The Open Inference Protocol's tensor encoding, shared by the client and the server.

A tensor is a JSON object ``{"name", "datatype", "shape"}`` plus either ``"data"`` (a flat JSON
list) or, with the binary tensor data extension, ``"parameters": {"binary_data_size": N}`` and
its raw bytes appended after the JSON header, in order.

Binary tensor data is handed on as byte views of the arrays (:func:`tensor_bytes`), not copied
into new ``bytes``: the sender writes them to its socket as they are, and a 196 KB input that is
copied twice costs more than the rest of a request's encoding together.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

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


def encode_tensor(name: str, arr: np.ndarray, datatype: str, binary: bool,
                  blobs: list[memoryview]) -> dict[str, Any]:
    """The tensor's JSON object; with ``binary`` a byte view of its data is appended to
    ``blobs`` (the array must not change until they are sent)."""
    doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if binary:
        raw = tensor_bytes(arr)
        doc["parameters"] = {"binary_data_size": raw.nbytes}
        blobs.append(raw)
    else:
        doc["data"] = arr.ravel().tolist()
    return doc
