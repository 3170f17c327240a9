"""The tabular Q-learning baseline: training runs, the table round-trips, mismatches are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgesched.errors import PolicyMismatchError
from edgesched.observation import N_ACTIONS, OBS_DIM
from edgesched.policy.qlearn import N_STATES, load_qtable, save_qtable, state_of
from edgesched_sim.evaluate import evaluate
from edgesched_sim.qlearn import train_qtable


def test_train_save_load_and_run(tmp_path: Path) -> None:
    q = train_qtable(["bcm2711"], scenarios=["steady-light"], steps=4000, seed=1)
    assert q.shape[0] == N_STATES and np.any(q != 0)
    assert np.array_equal(q, train_qtable(["bcm2711"], scenarios=["steady-light"], steps=4000,
                                          seed=1))
    save_qtable(tmp_path / "t.npz", q, {"devices": ["bcm2711"], "seed": 1})
    doc = evaluate("bcm2711", "steady-light", [f"qlearn:{tmp_path / 't.npz'}"], seed=0,
                   duration_s=10.0)
    assert doc["results"][0]["inferences"] > 0


def test_mismatched_or_changed_table_refused(tmp_path: Path) -> None:
    q = np.zeros((N_STATES, N_ACTIONS))
    mpath = save_qtable(tmp_path / "t.npz", q, {})
    manifest = json.loads(mpath.read_text())
    manifest["obs_version"] = 999
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(PolicyMismatchError, match="obs_version"):
        load_qtable(tmp_path / "t.npz")
    mpath = save_qtable(tmp_path / "u.npz", q, {})
    (tmp_path / "u.npz").write_bytes((tmp_path / "u.npz").read_bytes() + b"x")
    with pytest.raises(PolicyMismatchError, match="sha256"):
        load_qtable(tmp_path / "u.npz")


def test_state_buckets_cover_range() -> None:
    assert state_of(np.zeros(OBS_DIM, dtype=np.float32)) == 0
    assert state_of(np.ones(OBS_DIM, dtype=np.float32)) == N_STATES - 1
