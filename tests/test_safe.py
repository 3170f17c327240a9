"""The safe set (edgesched.policy.safe) and the observation's version-2 features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgesched.device import load_profile
from edgesched.observation import (
    CLUSTER_FEATURES,
    GLOBAL_FEATURES,
    MAX_CLUSTERS,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    BoardView,
    DecisionContext,
    build_observation,
    run_time_s,
)
from edgesched.policy.safe import SafeSet
from edgesched.policy.slack import SlackPolicy


def context(name: str = "rk3399", slack_s: float = 0.05, priority: int = 1,
            **extra: object) -> DecisionContext:
    profile = load_profile(name)
    n = len(profile.clusters)
    ctx = DecisionContext(now_s=1.0, head_priority=priority, head_deadline_s=1.0 + slack_s,
                          head_work=profile.work_from_top_latency(10.0), levels=3, queue_len=0,
                          urgent_waiting=0, backlog_ms=0.0, earliest_deadline_s=math.inf,
                          cur_opp=[0] * n, arrival_rate_hz=0.0, utilisation=0.3,
                          util_by_cluster=[0.3] * n, busy_fraction_by_cluster=[0.3] * n)
    for k, v in extra.items():
        setattr(ctx, k, v)
    return ctx


def feature(obs: np.ndarray, name: str, cluster: int | None = None) -> float:
    if cluster is None:
        return float(obs[GLOBAL_FEATURES.index(name)])
    return float(obs[len(GLOBAL_FEATURES) + cluster * len(CLUSTER_FEATURES)
                     + CLUSTER_FEATURES.index(name)])


@pytest.mark.parametrize("name", ["rk3399", "bcm2711", "rk3588", "exynos5422"])
@pytest.mark.parametrize("slack_s", [0.004, 0.012, 0.03, 0.5])
def test_safe_actions_meet_the_deadline_and_best_is_slacks_choice(name: str,
                                                                 slack_s: float) -> None:
    view = BoardView.of(load_profile(name))
    ctx = context(name, slack_s)
    safe = SafeSet().compute(view, ctx)
    allowed = np.flatnonzero(safe.mask)
    assert len(allowed) > 0 and not (safe.mask & (view.mask == 0)).any()
    runs = {int(a): run_time_s(view, ctx, view.decode(int(a))) for a in np.flatnonzero(view.mask)}
    fastest_s = min(runs.values())
    if fastest_s <= slack_s:
        assert all(runs[int(a)] <= slack_s for a in allowed), "every safe action is in time"
        assert all(safe.mask[a] for a, t in runs.items() if t <= slack_s), (
            "every in-time action is safe (no other bound binds here)")
    else:
        assert all(runs[int(a)] == pytest.approx(fastest_s) for a in allowed), "the fastest"
    # the least-energy safe action runs what slack runs (to the levels' resolution: the lowest
    # level at or above slack's OPP on slack's cluster)
    slack = SlackPolicy().decide(view, ctx)
    assert safe.best == view.encode(slack)
    best = view.decode(safe.best)
    assert safe.energy[best.cluster] == 1.0
    assert safe.freq[best.cluster] == pytest.approx(view.freq_frac[best.cluster][best.opp])


def test_actions_above_the_thermal_cap_are_judged_at_the_cap() -> None:
    view = BoardView.of(load_profile("rk3399"))
    big = 1
    top = len(view.profile.clusters[big].opps) - 1
    ctx = context("rk3399", 0.5, cap_opp=[len(view.profile.clusters[0].opps) - 1, 2])
    safe = SafeSet().compute(view, ctx)
    for a in np.flatnonzero(view.mask):
        d = view.decode(int(a))
        if d.cluster == big and d.opp > 2:
            # it runs at the cap, so it is exactly as safe as the action that decodes to it
            assert safe.mask[a] == safe.mask[view.encode(d._replace(opp=2))]
    assert top > 2


def test_the_observation_shows_heat_caps_and_the_safe_set() -> None:
    view = BoardView.of(load_profile("rk3588"))
    tops = [len(c.opps) - 1 for c in view.profile.clusters]
    ctx = context("rk3588", 0.03, temp_c=60.0, trip_c=70.0, cap_opp=[tops[0], 3, tops[2]])
    safe = SafeSet().compute(view, ctx)
    obs = build_observation(view, ctx, safe)
    assert obs.shape == (OBS_DIM,) and MAX_CLUSTERS == 4
    assert ((obs >= OBS_LOW) & (obs <= OBS_HIGH)).all()
    assert feature(obs, "thermal_headroom") == pytest.approx(math.tanh(1.0), rel=1e-6)
    assert feature(obs, "cap_freq", 1) == pytest.approx(view.freq_frac[1][3], rel=1e-6)
    assert feature(obs, "cap_freq", 0) == 1.0
    for c in range(3):
        assert feature(obs, "present", c) == 1.0
        assert feature(obs, "safe_energy", c) == pytest.approx(safe.energy[c], rel=1e-6)
        assert feature(obs, "safe_freq", c) == pytest.approx(safe.freq[c], rel=1e-6)
    assert feature(obs, "present", 3) == 0.0  # the fourth slot is empty on a three-domain board
    cool = build_observation(view, context("rk3588", 0.03), safe)
    assert feature(cool, "thermal_headroom") == 1.0 and feature(cool, "cap_freq", 1) == 1.0
    hot = build_observation(view, context("rk3588", 0.03, temp_c=95.0, trip_c=70.0), safe)
    assert feature(hot, "thermal_headroom") < -0.98
