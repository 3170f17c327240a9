"""Tabular Q-learning policy in the style of AutoScale: observation buckets -> action.

The table is trained in the simulator (:mod:`edgesched_sim.qlearn`) and stored like a learned
policy: ``NAME.npz`` (array ``q``, states x actions) with a ``NAME.json`` manifest beside it. The
state is a bucketing of the shared observation, so the same table runs in the daemon.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import PolicyError, PolicyMismatchError
from edgesched.observation import (
    CLUSTER_FEATURES,
    GLOBAL_FEATURES,
    MAX_CLUSTERS,
    N_ACTIONS,
    OBS_VERSION,
    BoardView,
    Decision,
    DecisionContext,
    action_map_id,
    build_observation,
    check_policy_board,
)
from edgesched.policy.base import StaticPolicy

QTABLE_FORMAT = "edgesched-qtable/1"

_REQ0 = len(GLOBAL_FEATURES) + CLUSTER_FEATURES.index("required_freq")
# (observation index, bucket edges): slack, priority, queue length, required freq of cluster 0/1
BUCKETS: tuple[tuple[int, tuple[float, ...]], ...] = (
    (2, (0.0, 0.25, 0.5, 0.75, 0.9)),   # head_slack
    (1, (0.25, 0.75)),                   # head_priority
    (0, (0.2, 0.5)),                     # queue_len
    (4, (0.1, 0.4)),                     # backlog
    (_REQ0, (0.25, 0.5, 0.75)),          # required_freq, cluster 0
    (_REQ0 + len(CLUSTER_FEATURES), (0.25, 0.5, 0.75)),  # required_freq, cluster 1
)
N_STATES = int(np.prod([len(edges) + 1 for _, edges in BUCKETS]))


def state_of(obs: np.ndarray) -> int:
    """The table row of an observation."""
    s = 0
    for idx, edges in BUCKETS:
        v = float(obs[idx])
        b = 0
        for e in edges:
            if v > e:
                b += 1
        s = s * (len(edges) + 1) + b
    return s


class QTablePolicy(StaticPolicy):
    """Greedy over the Q-table among the board's unmasked actions."""

    name = "qlearn"
    observation_clusters = MAX_CLUSTERS
    """Clusters the observation shows: ``reset`` refuses a board with more."""

    def __init__(self, q: np.ndarray) -> None:
        if q.shape != (N_STATES, N_ACTIONS):
            raise PolicyMismatchError(f"Q-table has shape {q.shape}, expected {(N_STATES, N_ACTIONS)}")
        self.q = q.astype(np.float64)

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del seed
        check_policy_board(self, view.profile)

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        row = self.q[state_of(build_observation(view, ctx))]
        masked = np.where(view.mask > 0, row, -np.inf)
        return view.decode(int(np.argmax(masked)))


def save_qtable(path: Path, q: np.ndarray, extra: dict[str, Any]) -> Path:
    """Write ``path`` (.npz) and its manifest (.json); returns the manifest path."""
    path = Path(path).with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, q=q.astype(np.float32))
    manifest = {"format": QTABLE_FORMAT, "obs_version": OBS_VERSION, "n_actions": N_ACTIONS,
                "action_map": action_map_id(), "n_states": N_STATES,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **extra}
    mpath = path.with_suffix(".json")
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return mpath


def load_qtable(path: str | Path) -> QTablePolicy:
    """Load a Q-table policy; refuses a table made for another observation or action map."""
    path = Path(path).with_suffix(".npz")
    mpath = path.with_suffix(".json")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        blob = path.read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyError(f"cannot read Q-table {path} / {mpath}: {exc}") from None
    if manifest.get("format") != QTABLE_FORMAT:
        raise PolicyMismatchError(f"{mpath}: format {manifest.get('format')!r}, expected {QTABLE_FORMAT!r}")
    for key, want in (("obs_version", OBS_VERSION), ("action_map", action_map_id()),
                      ("n_states", N_STATES)):
        if manifest.get(key) != want:
            raise PolicyMismatchError(f"{mpath}: {key} is {manifest.get(key)!r}, this edgesched "
                                      f"needs {want!r}; retrain the table")
    if hashlib.sha256(blob).hexdigest() != manifest.get("sha256"):
        raise PolicyMismatchError(f"{path}: sha256 does not match its manifest (file changed?)")
    with np.load(path, allow_pickle=False) as data:
        return QTablePolicy(data["q"])
