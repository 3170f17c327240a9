"""The Open Inference Protocol's tensor encoding, shared by the client and the server.

A tensor is a JSON object ``{"name", "datatype", "shape"}`` plus either ``"data"`` (a flat JSON
list) or, with the binary tensor data extension, ``"parameters": {"binary_data_size": N}`` and
its raw bytes appended after the JSON header, in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_tensor(name: str, arr: np.ndarray, datatype: str, binary: bool,
                  blobs: list[bytes]) -> dict[str, Any]:
    """The tensor's JSON object; with ``binary`` its bytes are appended to ``blobs``."""
    doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    if binary:
        raw = np.ascontiguousarray(arr).tobytes()
        doc["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        doc["data"] = arr.ravel().tolist()
    return doc
