"""Training of the tabular Q-learning baseline (AutoScale style) in the simulator.

Epsilon-greedy one-step Q-learning over the bucketed shared observation, with the board's action
mask. ``qlearn`` in ``edgesched eval`` trains a table for the device on the fly (deterministic in
the seed); ``qlearn:PATH`` loads a saved one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgesched.device import DeviceProfile
from edgesched.observation import N_ACTIONS, check_observable
from edgesched.policy.qlearn import N_STATES, QTablePolicy, load_qtable, state_of
from edgesched_sim.env import EdgeDVFSEnv
from edgesched_sim.scenarios import BUILTIN_NAMES

_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def train_qtable(devices: Sequence[str | DeviceProfile], scenarios: Sequence[str] = BUILTIN_NAMES,
                 steps: int = 150_000, seed: int = 0, alpha: float = 0.1, gamma: float = 0.9,
                 epsilon: float = 0.2) -> np.ndarray:
    env = EdgeDVFSEnv(devices=devices, scenarios=scenarios, duration_s=30.0, safe_actions=False)
    rng = np.random.default_rng(seed)
    q = np.zeros((N_STATES, N_ACTIONS))
    obs, info = env.reset(seed=seed)
    mask = info["action_mask"] > 0
    valid = np.flatnonzero(mask)
    s = state_of(obs)
    for i in range(steps):
        eps = epsilon * (1.0 - i / steps) + 0.02
        if rng.random() < eps:
            a = int(valid[rng.integers(len(valid))])
        else:
            a = int(np.argmax(np.where(mask, q[s], -np.inf)))
        obs, r, term, trunc, _ = env.step(a)
        if term or trunc:
            q[s, a] += alpha * (r - q[s, a])
            obs, info = env.reset()
            mask = info["action_mask"] > 0
            valid = np.flatnonzero(mask)
            s = state_of(obs)
            continue
        s2 = state_of(obs)
        q[s, a] += alpha * (r + gamma * np.max(np.where(mask, q[s2], -np.inf)) - q[s, a])
        s = s2
    return q


def qlearn_policy(spec: str, profile: DeviceProfile, seed: int = 0) -> QTablePolicy:
    """``qlearn`` (train for ``profile`` now, cached per process) or ``qlearn:PATH``."""
    if spec.startswith("qlearn:"):
        return load_qtable(spec.split(":", 1)[1])
    check_observable(profile, f"policy {spec!r}")  # before training on a board it cannot see
    key = (profile.name, seed, hash(profile.clusters))
    if key not in _CACHE:
        _CACHE[key] = train_qtable([profile], seed=seed)
    return QTablePolicy(_CACHE[key])
