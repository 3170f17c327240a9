"""The gymnasium environment ``edgesched/EdgeDVFS-v0``.

One step is one dispatch decision: the observation describes the request about to run (built by
:func:`edgesched.observation.build_observation`, the daemon's builder), the action picks a cluster
and a frequency level (decoded by the same :class:`~edgesched.observation.BoardView` the daemon
uses), and the engine runs the request and everything that arrives meanwhile.

Reward per step::

    - (energy of the step above the board's idle power) / (mean energy of the episode's
      requests at the board's top speed)
    - sum over requests missed during the step of miss_weight[priority]

so the energy term is unit-free and comparable across boards (idle power over the run does not
depend on the policy and is left out). ``info["action_mask"]`` (and :meth:`action_masks`, for
sb3-contrib's MaskablePPO) marks the decision's safe actions (:mod:`edgesched.policy.safe`):
distinct OPPs the board has whose run keeps the bounds of ``slack``, the set the learned policies
choose from at run time too.

Domain randomisation: ``devices`` and ``scenarios`` may list several; each reset picks one of each
with the environment's seeded generator. With ``sampler`` (e.g.
:class:`edgesched_sim.randomise.TrainingSampler`) each reset draws a new generated board and
workload from that generator instead.

Miss budgets as constraints: :meth:`EdgeDVFSEnv.set_miss_weights` replaces the per-class miss
weights (the Lagrange multipliers of :class:`edgesched.qos.LagrangeMultipliers`, updated by the
training callback), and the last step of an episode reports ``info["class_outcomes"]``:
``{priority: (missed, requests)}`` of the episode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from edgesched.device import DeviceProfile, load_profile
from edgesched.observation import (
    N_ACTIONS,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    SafeActions,
    build_observation,
    check_observable,
)
from edgesched.policy.safe import SafeSet
from edgesched.queue import Entry
from edgesched_sim.engine import MISSED, BoardTables, Engine, QueueConfig
from edgesched_sim.scenarios import Scenario, generate, load_scenario
from edgesched_sim.workloads import model_names

_MISSED = frozenset(int(o) for o in MISSED)


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward; miss weights by priority (1 = highest)."""

    energy_weight: float = 1.0
    miss_weight: Mapping[int, float] = field(default_factory=lambda: {1: 50.0, 2: 2.0, 3: 0.5})


class EdgeDVFSEnv(gym.Env[np.ndarray, np.int64]):
    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, devices: Sequence[str | DeviceProfile] = ("rk3399",),
                 scenarios: Sequence[str | Scenario] = ("steady-light",),
                 duration_s: float | None = 30.0, reward: RewardConfig | None = None,
                 queue: QueueConfig | None = None,
                 sampler: Callable[[np.random.Generator], tuple[DeviceProfile, Scenario]]
                 | None = None, safe_actions: bool = True,
                 reference: str | None = None) -> None:
        super().__init__()
        self.reference = reference
        """A policy spec (e.g. ``schedutil``) run on each episode's job set at reset: the last
        step then also reports its ``{priority: (missed, requests)}`` as
        ``info["class_outcomes_reference"]`` (for constraints relative to that policy)."""
        self._ref_outcomes: dict[int, tuple[int, int]] = {}
        self.safe_actions = safe_actions
        """Compute each decision's safe set (the mask and the observation's safe features);
        off: the board's mask and the features as :func:`build_observation` gives them without
        one (for policies that do not use it, such as ``qlearn``)."""
        self.sampler = sampler
        if not devices or not scenarios:
            raise ValueError("need at least one device and one scenario")
        self.profiles = [d if isinstance(d, DeviceProfile) else load_profile(d) for d in devices]
        for prof in self.profiles:  # the observation and actions show MAX_CLUSTERS clusters
            check_observable(prof, "training (the learned policies' environment)")
        self.scenarios = [s if isinstance(s, Scenario) else load_scenario(s) for s in scenarios]
        self.duration_s = duration_s
        self.reward_cfg = reward or RewardConfig()
        self.queue_cfg = queue or QueueConfig()
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.engine: Engine | None = None
        self._head: Entry | None = None
        self._energy_scale_j = 1.0
        weights = self.reward_cfg.miss_weight
        self._miss_w = [0.0] + [float(weights.get(p, 1.0)) for p in range(1, 9)]
        self._energy_weight = self.reward_cfg.energy_weight
        self._tables: dict[int, BoardTables] = {}
        """Board constants by profile index, built on first use."""
        self._safe_set = SafeSet()
        self._safe: SafeActions | None = None
        """The current decision's safe set."""

    def set_miss_weights(self, weights: Mapping[int, float]) -> None:
        """Per-class miss weights from now on (classes not named keep theirs)."""
        for p, w in weights.items():
            if 1 <= int(p) < len(self._miss_w):
                self._miss_w[int(p)] = float(w)

    @staticmethod
    def _class_outcomes(eng: Engine) -> dict[int, tuple[int, int]]:
        """``{priority: (missed, requests)}`` of the episode, classes in order of first request."""
        prios = eng.job_prio
        requests = Counter(prios)  # keys in order of first appearance, as the dict below
        missed = Counter(compress(prios, map(_MISSED.__contains__, eng._outcome)))
        return {p: (missed[p], n) for p, n in requests.items()}

    def _new_engine(self) -> Engine:
        rng = self.np_random
        if self.sampler is not None:
            profile, sc = self.sampler(rng)
            dur = sc.duration_s if self.duration_s is None else self.duration_s
            jobs = generate(sc, int(rng.integers(2**31 - 1)), dur)
            engine = Engine(profile, jobs, dur, self.queue_cfg,
                            BoardTables(profile, model_names()))
            engine.track_pelt = False
            return engine
        pi = int(rng.integers(len(self.profiles)))
        profile = self.profiles[pi]
        sc = self.scenarios[int(rng.integers(len(self.scenarios)))]
        dur = sc.duration_s if self.duration_s is None else self.duration_s
        jobs = generate(sc, int(rng.integers(2**31 - 1)), dur)
        tables = self._tables.get(pi)
        if tables is None:
            tables = self._tables[pi] = BoardTables(profile, model_names())
        engine = Engine(profile, jobs, dur, self.queue_cfg, tables)
        engine.track_pelt = False  # the observation does not use it; only governors do
        return engine

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        while True:
            self.engine = self._new_engine()
            self._head = self.engine.next_head()
            if self._head is not None:
                break
        self.engine.step_missed.clear()
        ref = self.engine.ref_j
        models = self.engine.job_model
        self._energy_scale_j = sum(map(ref.__getitem__, models)) / len(models)
        self._safe_set.reset(self.engine.view)
        if self.reference is not None:
            self._ref_outcomes = self._reference_outcomes(self.engine)
        obs = self._observe(self.engine, self._head)
        return obs, {"action_mask": self._mask_info()}

    def _reference_outcomes(self, eng: Engine) -> dict[int, tuple[int, int]]:
        """Per class (missed, requests) of the reference policy on ``eng``'s job set."""
        from edgesched.policy.registry import make_policy

        assert self.reference is not None
        ref = Engine(eng.profile, eng.jobs, eng.duration_s, self.queue_cfg, eng.tables)
        ref.run(make_policy(self.reference))
        return self._class_outcomes(ref)

    def _observe(self, eng: Engine, head: Entry) -> np.ndarray:
        """The observation of ``head`` with its safe set, built as the daemon builds it."""
        ctx = eng.context(head, reuse=True)  # kept by nothing past this decision
        if not self.safe_actions:
            return build_observation(eng.view, ctx)
        safe = self._safe = self._safe_set.compute(eng.view, ctx)
        return build_observation(eng.view, ctx, safe)

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        eng = self.engine
        head = self._head
        if eng is None or head is None:
            raise RuntimeError("step() called before reset() or after the episode ended")
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action {a} outside 0..{N_ACTIONS - 1}")
        before = eng.extra_j
        eng.run_head(head, eng.view.decoded[a])
        head = self._head = eng.next_head()
        reward = -self._energy_weight * (eng.extra_j - before) / self._energy_scale_j
        missed = eng.step_missed
        if missed:
            reward -= sum(map(self._miss_w.__getitem__, missed))
            missed.clear()
        if head is None:
            info: dict[str, Any] = {"class_outcomes": self._class_outcomes(eng)}
            if self.reference is not None:
                info["class_outcomes_reference"] = self._ref_outcomes
            obs = np.zeros(OBS_DIM, dtype=np.float32)
            return np.clip(obs, OBS_LOW, OBS_HIGH), float(reward), True, False, info
        # ``_observe`` and ``_mask_info``, written out
        ctx = eng.context(head, reuse=True)  # kept by nothing past this decision
        if not self.safe_actions:
            return (build_observation(eng.view, ctx), float(reward), False, False,
                    {"action_mask": eng.view.mask.copy()})
        safe = self._safe = self._safe_set.compute(eng.view, ctx)
        return (build_observation(eng.view, ctx, safe), float(reward), False, False,
                {"action_mask": safe.mask.copy()})

    def _mask_info(self) -> np.ndarray:
        """``info["action_mask"]``: a copy of the current decision's safe actions as int8 (the
        masks are int8 0/1 already)."""
        assert self.engine is not None
        return (self.engine.view.mask if self._safe is None else self._safe.mask).copy()

    def action_masks(self) -> np.ndarray:
        """The current decision's safe actions (for sb3-contrib's MaskablePPO)."""
        assert self.engine is not None
        if self._safe is None:
            return self.engine.view.mask.astype(bool)
        return self._safe.mask.astype(bool)
