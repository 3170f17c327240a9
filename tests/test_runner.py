"""The model runner: real shipped TFLite models, and a broken one that is skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR

from edgesched.errors import ModelError
from edgesched.server.runner import load_model, load_models


def test_shipped_models_load_with_metadata() -> None:
    models, errors = load_models(MODELS_DIR, warmup_runs=1, measure_runs=3)
    assert errors == []
    assert set(models) == {"face_detection_short_range", "hand_landmark_lite", "okay_nabu"}
    face = models["face_detection_short_range"]
    assert face.service_s > 0
    meta = face.metadata()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 128, 128, 3]}]
    out = face.run({"input": np.zeros((1, 128, 128, 3), np.float32)})
    assert out["regressors"].shape == (1, 896, 16)
    assert models["okay_nabu"].inputs[0].datatype == "INT8"
    assert models["okay_nabu"].input_bytes == 120


def test_models_are_at_most_a_few_megabytes() -> None:
    for path in MODELS_DIR.glob("*.tflite"):
        assert path.stat().st_size < 4 << 20, path
    assert (MODELS_DIR / "README.md").is_file()


def test_broken_model_is_skipped_with_its_path(tmp_path: Path) -> None:
    shutil.copy(MODELS_DIR / "okay_nabu.tflite", tmp_path)
    (tmp_path / "broken.tflite").write_bytes(b"\0" * 64)
    (tmp_path / "notes.txt").write_text("ignored")
    models, errors = load_models(tmp_path, warmup_runs=0, measure_runs=1)
    assert list(models) == ["okay_nabu"]
    assert len(errors) == 1 and str(tmp_path / "broken.tflite") in errors[0]
    with pytest.raises(ModelError, match=r"broken\.tflite"):
        load_model(tmp_path / "broken.tflite")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_models(tmp_path / "nope")


def test_record_keeps_a_window() -> None:
    m = load_model(MODELS_DIR / "okay_nabu.tflite", warmup_runs=0, measure_runs=1)
    for i in range(300):
        m.record(i * 1e-6)
    assert m.runs == 300 and len(m.recent_s) == 256 and m.recent_s[-1] == 299e-6


def test_tflite_runtime_against_numpy2_is_explained(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ai_edge_litert, a tflite_runtime built for numpy 1.x fails with a clear hint."""
    import sys

    from edgesched.server.runner import interpreter_class

    pkg = tmp_path / "tflite_runtime"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "interpreter.py").write_text(
        "raise ImportError('numpy.core.multiarray failed to import', "
        "name='numpy.core.multiarray')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    # the hint depends on the installed numpy's major version: both sides, whatever is installed
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(ModelError, match="numpy<2"):
        interpreter_class()
    monkeypatch.setattr(np, "__version__", "1.26.4")
    with pytest.raises(ModelError, match="no TFLite interpreter") as info:
        interpreter_class()
    assert "numpy<2" not in str(info.value)
