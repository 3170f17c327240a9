"""An MLServer runtime that serves one ``.tflite`` model with ai_edge_litert, for bench/peers.py.

MLServer (the Python Open Inference Protocol server) loads it by import string from a
``model-settings.json`` that ``bench/peers.py`` writes per model::

    {"name": "okay_nabu", "implementation": "mlserver_runtime.TFLiteRuntime",
     "parameters": {"uri": "/path/to/okay_nabu.tflite"}}

with this folder on ``PYTHONPATH``. The model runs the way the daemon runs it: one
``Interpreter`` per model with one thread, ``set_tensor`` + ``invoke`` + ``get_tensor``, inside
``predict`` (no thread hand-off of its own: MLServer's ``parallel_workers`` decides where that
runs). Requests carry JSON tensors (MLServer's REST side rejects Triton's binary tensor extension).

The tensor conversion (:func:`decode_tensor`, :func:`encode_tensor`) is plain numpy, so that it
imports and is tested without MLServer (tests/test_peers_runtime.py); the runtime class needs
MLServer (the ``[bench]`` extra, in ``.venv-bench``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from mlserver import MLModel
except ImportError:  # the daemon's test venv has no MLServer: the tensor helpers still import
    MLModel = object

# Open Inference Protocol datatypes and the numpy dtypes they carry
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
DATATYPES: dict[np.dtype[Any], str] = {v: k for k, v in DTYPES.items()}


class TensorError(ValueError):
    """A request tensor that does not fit the model; the message says what it needs."""


def decode_tensor(name: str, datatype: str, shape: Sequence[int], data: Any,
                  want_dtype: np.dtype[Any], want_shape: Sequence[int]) -> np.ndarray:
    """The numpy array of one request tensor (flat or nested JSON ``data``), checked against
    the model input's dtype and shape."""
    want_shape = [int(s) for s in want_shape]  # interpreter details hold numpy ints
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"input {name!r}: unknown datatype {datatype!r}; use one of "
                          f"{', '.join(DTYPES)}")
    if dtype != want_dtype:
        raise TensorError(f"input {name!r} is {DATATYPES.get(want_dtype, want_dtype)}, "
                          f"the request sent {datatype}")
    if list(shape) != list(want_shape):
        raise TensorError(f"input {name!r} has shape {list(want_shape)}, the request sent "
                          f"{list(shape)}")
    arr = np.asarray(data, dtype=dtype)
    if arr.size != int(np.prod(want_shape)):
        raise TensorError(f"input {name!r}: {arr.size} values for shape {list(want_shape)} "
                          f"({int(np.prod(want_shape))} values)")
    return arr.reshape(want_shape)


def encode_tensor(arr: np.ndarray) -> tuple[str, list[int], list[Any]]:
    """(datatype, shape, flat data list) of one output tensor for a JSON answer."""
    datatype = DATATYPES.get(arr.dtype)
    if datatype is None:
        raise TensorError(f"output dtype {arr.dtype} has no Open Inference Protocol datatype")
    return datatype, list(arr.shape), arr.ravel().tolist()


class TFLiteRuntime(MLModel):
    """One ``.tflite`` model (``parameters.uri``) served by MLServer."""

    async def load(self) -> bool:
        from ai_edge_litert.interpreter import Interpreter

        uri = self.settings.parameters.uri if self.settings.parameters else None
        if not uri:
            raise TensorError(f"model {self.name!r}: set parameters.uri to the .tflite file")
        self._interp = Interpreter(model_path=uri, num_threads=1)
        self._interp.allocate_tensors()
        self._inputs = {d["name"]: d for d in self._interp.get_input_details()}
        self._outputs = list(self._interp.get_output_details())
        self._interp.invoke()  # the first invoke prepares the delegate
        return True

    async def predict(self, payload: Any) -> Any:
        from mlserver.errors import MLServerError
        from mlserver.types import InferenceResponse, ResponseOutput

        sent = {inp.name: inp for inp in payload.inputs}
        if set(sent) != set(self._inputs):
            raise MLServerError(f"model {self.name!r} takes inputs {sorted(self._inputs)}, the "
                                f"request sent {sorted(sent)}", status_code=400)
        try:
            for name, detail in self._inputs.items():
                inp = sent[name]
                data = inp.data.root if hasattr(inp.data, "root") else inp.data
                arr = decode_tensor(name, inp.datatype, inp.shape, data,
                                    np.dtype(detail["dtype"]), list(detail["shape"]))
                self._interp.set_tensor(detail["index"], arr)
        except TensorError as exc:
            raise MLServerError(str(exc), status_code=400) from exc
        self._interp.invoke()
        outputs = []
        for detail in self._outputs:
            datatype, shape, flat = encode_tensor(self._interp.get_tensor(detail["index"]))
            outputs.append(ResponseOutput(name=detail["name"], shape=shape, datatype=datatype,
                                          data=flat))
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 id=payload.id, outputs=outputs)
