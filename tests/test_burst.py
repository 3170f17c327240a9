"""The burstiness of arrivals (``BurstMeter``), as the simulator and the daemon measure it and
the observation shows it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgesched.device import load_profile
from edgesched.observation import (
    GLOBAL_FEATURES,
    OBS_HIGH,
    OBS_LOW,
    BoardView,
    DecisionContext,
    build_observation,
)
from edgesched.utilisation import BurstMeter
from edgesched_sim.env import EdgeDVFSEnv


def _poisson(rate_hz: float, duration_s: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate_hz, int(rate_hz * duration_s * 1.5) + 10)
    times = np.cumsum(gaps)
    return [float(t) for t in times[times < duration_s]]


def _mmpp(rates_hz: tuple[float, float], dwell_s: tuple[float, float], duration_s: float,
          seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    out: list[float] = []
    t, state = 0.0, 0
    switch = float(rng.exponential(dwell_s[0]))
    while t < duration_s:
        gap = float(rng.exponential(1.0 / rates_hz[state]))
        if t + gap > switch:
            t, state = switch, 1 - state
            switch = t + float(rng.exponential(dwell_s[state]))
            continue
        t += gap
        out.append(t)
    return out


def _fed(times: list[float]) -> BurstMeter:
    meter = BurstMeter()
    for t in times:
        meter.event(t)
    return meter


def _plain_dispersion(times: list[float], now_s: float, bin_s: float = 1.0,
                      horizon_bins: float = 30.0) -> float:
    """The docstring's definition, computed directly: every closed bin's count, weighted by
    ``keep ** age``."""
    keep = 1.0 - 1.0 / horizon_bins
    closed = int(now_s // bin_s)
    counts = [0] * closed
    for t in times:
        b = int(t // bin_s)
        if b < closed:
            counts[b] += 1
    weights = [keep ** (closed - 1 - b) for b in range(closed)]
    w = sum(weights)
    mean = sum(c * x for c, x in zip(counts, weights, strict=True)) / w
    second = sum(c * c * x for c, x in zip(counts, weights, strict=True)) / w
    return (second - mean * mean) / mean


@pytest.mark.parametrize("rate_hz", [0.5, 2.0, 13.0, 80.0])
def test_poisson_arrivals_read_about_one_at_any_rate(rate_hz: float) -> None:
    for seed in range(3):
        times = _poisson(rate_hz, 120.0, seed)
        d = _fed(times).dispersion(120.0)
        assert 0.5 < d < 1.8, (rate_hz, seed, d)


def test_bursts_read_far_above_one_and_a_steady_camera_below() -> None:
    for seed in range(3):
        times = _mmpp((3.0, 35.0), (4.0, 1.0), 120.0, seed)  # the built-in ``bursty``
        assert _fed(times).dispersion(120.0) > 5.0
    frames = [i / 30.0 for i in range(3600)]
    assert _fed(frames).dispersion(120.0) < 0.1


def test_the_meter_is_its_definition_including_long_gaps() -> None:
    times = _mmpp((3.0, 35.0), (4.0, 1.0), 50.0, seed=4)
    times += [t + 130.0 for t in _poisson(9.0, 40.0, seed=5)]  # 80 s of nothing between
    meter = BurstMeter()
    checked = 0
    for i, t in enumerate(times):
        meter.event(t)
        if i % 97 == 0 and t > 6.0:
            assert meter.dispersion(t) == pytest.approx(_plain_dispersion(times[:i + 1], t),
                                                        rel=1e-9)
            checked += 1
    assert checked > 5
    assert meter.dispersion(200.0) == pytest.approx(_plain_dispersion(times, 200.0), rel=1e-9)


def test_it_reads_one_until_enough_bins_and_without_arrivals() -> None:
    meter = BurstMeter()
    assert meter.dispersion(100.0) == 1.0  # no arrival counted
    meter = BurstMeter(now_s=10.0)
    for t in (10.1, 10.2, 12.5, 13.9):
        meter.event(t)
    assert meter.dispersion(14.5) == 1.0  # 4 bins complete
    assert meter.dispersion(15.0) != 1.0
    with pytest.raises(ValueError, match="bin_s"):
        BurstMeter(bin_s=0.0)


def test_the_environment_shows_bursts_in_the_observation() -> None:
    idx = GLOBAL_FEATURES.index("arrival_burstiness")
    seen: dict[str, float] = {}
    for scenario in ("bursty", "steady-heavy"):
        env = EdgeDVFSEnv(devices=["rk3399"], scenarios=[scenario], duration_s=40.0)
        env.reset(seed=3)
        top = -1.0
        for _ in range(3000):
            obs, _, done, _, _ = env.step(int(np.flatnonzero(env.action_masks())[0]))
            top = max(top, float(obs[idx]))
            if done:
                break
        seen[scenario] = top
    assert seen["bursty"] > 0.5 > seen["steady-heavy"], seen


def test_the_feature_is_bounded_for_any_dispersion() -> None:
    profile = load_profile("rk3588")
    view = BoardView.of(profile)
    ctx = DecisionContext(
        now_s=1.0, head_priority=1, head_deadline_s=1.1,
        head_work=profile.work_from_top_latency(10.0), levels=3, queue_len=2, urgent_waiting=1,
        backlog_ms=5.0, earliest_deadline_s=1.2, cur_opp=[0] * len(profile.clusters),
        arrival_rate_hz=10.0, utilisation=0.3, util_by_cluster=[0.3] * len(profile.clusters),
        busy_fraction_by_cluster=[0.3] * len(profile.clusters))
    idx = GLOBAL_FEATURES.index("arrival_burstiness")
    for d, want in ((1.0, 0.0), (0.0, -1.0 / 3.0), (13.0, 0.75), (math.inf, 1.0),
                    (math.nan, 0.0), (-2.0, 0.0)):
        ctx.arrival_dispersion = d
        obs = build_observation(view, ctx)
        assert obs[idx] == pytest.approx(want, abs=1e-6), d
        assert np.all(obs >= OBS_LOW) and np.all(obs <= OBS_HIGH)
