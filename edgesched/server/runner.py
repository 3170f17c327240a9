"""TFLite models: load every ``.tflite`` in a folder, warm up, measure, describe, run.

The interpreter comes from ``ai_edge_litert`` (preferred) or ``tflite_runtime``. A model that
cannot be loaded is reported with its path and skipped; the others are still served.
Only the dispatcher thread runs models after start-up, so a model needs no lock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import ModelError

# KServe v2 datatype names <-> numpy dtypes (the ones a TFLite tensor can have)
DATATYPE_OF_DTYPE: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
DTYPE_OF_DATATYPE: dict[str, np.dtype[Any]] = {v: k for k, v in DATATYPE_OF_DTYPE.items()}
PLATFORM = "tensorflow_lite"
"""The models' ``platform`` in their metadata and configuration."""


def interpreter_class() -> Callable[..., Any]:
    """The TFLite ``Interpreter`` class: ai_edge_litert's, else tflite_runtime's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as litert_exc:
        try:
            from tflite_runtime.interpreter import Interpreter as TfliteInterpreter
        except ImportError as exc:
            hint = ""
            if int(np.__version__.split(".")[0]) >= 2 and "tflite_runtime" not in str(exc.name):
                hint = (f"; tflite-runtime is built against numpy 1.x and cannot load with numpy "
                        f"{np.__version__}: install ai-edge-litert, or numpy<2")
            raise ModelError(
                f"no TFLite interpreter: ai_edge_litert failed ({litert_exc}) and tflite_runtime "
                f"failed ({exc}){hint}") from None
        except AttributeError as exc:  # numpy 2 C-API mismatch surfaces as AttributeError
            raise ModelError(
                f"tflite_runtime cannot load with numpy {np.__version__} ({exc}); tflite-runtime "
                f"works only with numpy<2: install ai-edge-litert instead") from None
        return TfliteInterpreter
    return Interpreter


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    index: int
    dtype: np.dtype[Any] = field(init=False, repr=False, compare=False)
    count: int = field(init=False, repr=False, compare=False)
    """Number of elements."""
    size_bytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dtype = DTYPE_OF_DATATYPE[self.datatype]
        count = int(np.prod(self.shape, dtype=np.int64))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "size_bytes", count * dtype.itemsize)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    """One model: its interpreter, tensor specs and measured host service time."""

    name: str
    path: Path
    interpreter: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    service_s: float
    """Median host service time measured at start-up (the estimate at the top OPP)."""
    recent_s: list[float] = field(default_factory=list)
    runs: int = 0
    input_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False)
    output_by_name: Mapping[str, TensorSpec] = field(init=False, repr=False)
    wire_cache: dict[Any, Any] = field(init=False, repr=False, compare=False)
    """What admission worked out from request and answer headers seen before (by their bytes):
    the same JSON header is decoded and checked once (:mod:`edgesched.server.admission`)."""

    def __post_init__(self) -> None:
        self.input_by_name = {t.name: t for t in self.inputs}
        self.output_by_name = {t.name: t for t in self.outputs}
        self.wire_cache = {}

    @property
    def input_bytes(self) -> int:
        return sum(t.size_bytes for t in self.inputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Invoke the model; ``inputs`` were validated by admission (names, dtypes, shapes)."""
        it = self.interpreter
        for spec in self.inputs:
            it.set_tensor(spec.index, inputs[spec.name])
        it.invoke()
        return {spec.name: it.get_tensor(spec.index) for spec in self.outputs}

    def record(self, host_s: float, keep: int = 256) -> None:
        """Keep a window of recent host service times (reported by the status endpoint)."""
        self.runs += 1
        self.recent_s.append(host_s)
        if len(self.recent_s) > keep:
            del self.recent_s[: len(self.recent_s) - keep]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": ["1"], "platform": PLATFORM,
                "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    def config(self) -> dict[str, Any]:
        """The model's configuration as Triton's model configuration extension returns it (the
        JSON form of its ``ModelConfig`` message): no batching, so ``dims`` are whole shapes."""
        def tensor(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape)}

        return {"name": self.name, "platform": PLATFORM, "backend": "tflite",
                "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 0,
                "input": [{**tensor(t), "format": "FORMAT_NONE"} for t in self.inputs],
                "output": [tensor(t) for t in self.outputs],
                "default_model_filename": self.path.name}


def _spec(detail: Mapping[str, Any], path: Path, kind: str) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    datatype = DATATYPE_OF_DTYPE.get(dtype)
    if datatype is None:
        raise ModelError(f"{path}: {kind} tensor {detail['name']!r} has unsupported dtype {dtype}")
    shape = tuple(int(d) for d in detail["shape"])
    signature = detail.get("shape_signature")
    if signature is not None and any(int(d) < 0 for d in signature):
        raise ModelError(f"{path}: {kind} tensor {detail['name']!r} has a dynamic shape "
                         f"{list(signature)}; only fixed shapes are served")
    return TensorSpec(name=str(detail["name"]), datatype=datatype, shape=shape,
                      index=int(detail["index"]))


def _sample_input(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.random(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return np.zeros(spec.shape, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    return rng.integers(info.min, info.max, size=spec.shape, endpoint=True, dtype=spec.dtype)


def load_model(path: Path, num_threads: int = 1, warmup_runs: int = 3,
               measure_runs: int = 11, interpreter: Callable[..., Any] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> LoadedModel:
    """Load, warm up and measure one model; raises ModelError naming ``path``."""
    cls = interpreter or interpreter_class()
    try:
        it = cls(model_path=str(path), num_threads=num_threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load the model ({first})") from None
    inputs = tuple(_spec(d, path, "input") for d in it.get_input_details())
    outputs = tuple(_spec(d, path, "output") for d in it.get_output_details())
    names = [t.name for t in inputs] + [t.name for t in outputs]
    if len(set(names)) != len(names):
        raise ModelError(f"{path}: tensor names are not unique: {names}")
    model = LoadedModel(name=path.stem, path=path, interpreter=it, inputs=inputs,
                        outputs=outputs, service_s=0.0)
    rng = np.random.default_rng(0)
    sample = {t.name: _sample_input(t, rng) for t in inputs}
    times: list[float] = []
    try:
        for i in range(warmup_runs + measure_runs):
            t0 = clock()
            model.run(sample)
            if i >= warmup_runs:
                times.append(clock() - t0)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: the model failed its warm-up run ({exc})") from None
    model.service_s = statistics.median(times)
    return model


def load_models(folder: Path, num_threads: int = 1, warmup_runs: int = 3, measure_runs: int = 11,
                clock: Callable[[], float] = time.perf_counter,
                ) -> tuple[dict[str, LoadedModel], list[str]]:
    """Every loadable ``*.tflite`` in ``folder`` by name (file stem), and one error per skip."""
    if not folder.is_dir():
        raise ModelError(f"{folder}: models directory not found")
    cls = interpreter_class()
    models: dict[str, LoadedModel] = {}
    errors: list[str] = []
    for path in sorted(folder.glob("*.tflite")):
        try:
            models[path.stem] = load_model(path, num_threads, warmup_runs, measure_runs, cls,
                                           clock)
        except ModelError as exc:
            errors.append(str(exc))
    return models, errors


def shipped_models_dir() -> Path:
    """The folder of example models shipped with the package."""
    return Path(__file__).resolve().parent.parent / "models"
