"""The decision's fast paths compute exactly what the plain forms do (bit for bit).

``SafeSet.compute`` (its safe sets cached per priced options and per the options that keep the
bounds) against :func:`~edgesched.policy.safe.safe_actions` of a fresh ``SlackPolicy.plan``;
``slack``'s queue bound from the queue's own entries against the one from
``waiting_in_order``; the engine's reused context against a new one; the observation built
with the per-work constants against the features written out; the learned policy's cached
mask bias against the plain one.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgesched.device import load_profile
from edgesched.observation import (
    CLUSTER_FEATURES,
    GLOBAL_FEATURES,
    MAX_CLUSTERS,
    BoardView,
    DecisionContext,
    Waiting,
    build_observation,
)
from edgesched.policy.learned import load_learned, make_random_policy
from edgesched.policy.safe import SafeSet, safe_actions
from edgesched.policy.slack import SlackPolicy
from edgesched_sim.env import EdgeDVFSEnv


def _contexts(name: str, n: int, seed: int) -> list[DecisionContext]:
    """Decisions with queues behind the head, thermal caps, current OPPs and recent timeouts
    of every kind, on a clock that moves forward."""
    profile = load_profile(name)
    rng = np.random.default_rng(seed)
    works = [profile.work_from_top_latency(t) for t in (2.0, 15.0, 90.0)]
    nc = len(profile.clusters)
    out = []
    for i in range(n):
        now = 1.0 + 0.004 * i
        waiting = tuple(Waiting(now + float(rng.uniform(-0.01, 0.3)), float(rng.uniform(1, 40)),
                                int(rng.integers(1, 4))) for _ in range(int(rng.integers(0, 7))))
        cap = (None if rng.random() < 0.4 else
               [int(rng.integers(0, len(c.opps))) for c in profile.clusters])
        out.append(DecisionContext(
            now_s=now, head_priority=int(rng.integers(1, 4)),
            head_deadline_s=(math.inf if rng.random() < 0.05
                             else now + float(rng.uniform(-0.005, 0.25))),
            head_work=works[int(rng.integers(0, len(works)))], levels=3,
            queue_len=len(waiting), urgent_waiting=int(rng.integers(0, 4)),
            backlog_ms=float(rng.uniform(0, 80)), earliest_deadline_s=now + 0.1,
            cur_opp=[int(rng.integers(0, len(c.opps))) for c in profile.clusters],
            arrival_rate_hz=float(rng.uniform(0, 60)), utilisation=0.5,
            arrival_dispersion=float(rng.choice([0.0, 1.0, 14.0])),
            util_by_cluster=[0.5] * nc, busy_fraction_by_cluster=[0.5] * nc,
            urgent_timeout_s=float(rng.choice([math.inf, 0.03, 0.1])),
            head_enqueued_s=now - float(rng.uniform(0, 0.05)),
            waiting_in_order=lambda w=waiting: w, temp_c=float(rng.uniform(40, 90)),
            trip_c=75.0, cap_opp=cap))
    return out


@pytest.mark.parametrize("name", ["rk3399", "rk3588", "bcm2711", "exynos5422"])
def test_cached_safe_sets_are_those_of_a_fresh_plan(name: str) -> None:
    view = BoardView.of(load_profile(name))
    cached = SafeSet()
    cached.reset(view)
    plain = SlackPolicy()  # fed the same decisions, so its bounds' state is the same
    plain.reset(view)
    shared = 0
    seen: set[int] = set()
    for ctx in _contexts(name, 1500, seed=7):
        got = cached.compute(view, ctx)
        want = safe_actions(view, ctx, plain.plan(view, ctx))
        assert got.mask.tobytes() == want.mask.tobytes()
        assert (got.freq, got.energy, got.best) == (want.freq, want.energy, want.best)
        if id(got) in seen:
            shared += 1
            assert not got.mask.flags.writeable, "a cached mask is shared: read-only"
        elif not got.mask.flags.writeable:
            seen.add(id(got))  # cached: later decisions may share it
    assert shared > 0, "some decisions share a cached safe set"


def test_slacks_queue_bound_from_the_queues_entries_is_the_same() -> None:
    view = BoardView.of(load_profile("rk3399"))
    by_waiting, by_entries = SlackPolicy(), SlackPolicy()
    entry = dataclasses.make_dataclass("Entry", ["deadline_s", "service_ms", "priority"])
    for ctx in _contexts("rk3399", 400, seed=3):
        waiting = tuple(ctx.waiting_in_order())
        # the queue's own entries carry the same deadlines and service times, not the aged class
        entries = [entry(w.deadline_s, w.service_ms, 3) for w in waiting]
        with_entries = dataclasses.replace(ctx, entries_in_order=lambda e=entries: e)
        assert by_entries.plan(view, with_entries) == by_waiting.plan(view, ctx)


def test_the_engines_reused_context_is_a_new_one() -> None:
    env = EdgeDVFSEnv(devices=["rk3399"], scenarios=["mixed-priority"], duration_s=20.0)
    env.reset(seed=4)
    rng = np.random.default_rng(4)
    compared = 0
    for _ in range(1500):
        eng, head = env.engine, env._head
        assert eng is not None and head is not None
        reused = eng.context(head, reuse=True)
        assert reused is eng.context(head, reuse=True)
        assert reused == eng.context(head)  # every field, the callables included
        compared += 1
        _, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        if done:
            env.reset()
    assert compared == 1500


def _plain_observation(view: BoardView, ctx: DecisionContext, safe: object) -> list[float]:
    """The features as the docstrings of ``GLOBAL_FEATURES`` and ``CLUSTER_FEATURES`` write
    them, with the same arithmetic as ``build_observation``."""
    work = ctx.head_work
    threads = max(1, work.threads)
    mem_ms = work.mem_ms * view.mem_scale
    compute = [work.compute_mcycles * 1000.0 / (s * threads) for s in view.speed_top_mhz]
    top_ms = max(min(compute) + mem_ms, 1e-6)
    now = ctx.now_s
    slack_ms = (ctx.head_deadline_s - now) * 1000.0
    n, u = ctx.queue_len, ctx.urgent_waiting
    prio = (ctx.head_priority - 1) / max(ctx.levels - 1, 1)
    feats = [n / (n + 4.0), min(prio, 1.0),
             math.tanh(slack_ms / top_ms * 0.25) if slack_ms != math.inf else 1.0,
             mem_ms / top_ms, math.tanh(ctx.backlog_ms / top_ms * 0.125),
             (math.tanh((ctx.earliest_deadline_s - now) * 1000.0 / (top_ms + ctx.backlog_ms)
                        * 0.25) if ctx.earliest_deadline_s != math.inf else 1.0),
             u / (u + 4.0), math.tanh(ctx.arrival_rate_hz * top_ms * 0.001),
             min(max(ctx.utilisation, 0.0), 1.0),
             (math.tanh((ctx.trip_c - ctx.temp_c) * 0.1)
              if math.isfinite(ctx.temp_c) and math.isfinite(ctx.trip_c) else 1.0),
             (ctx.arrival_dispersion - 1.0) / (ctx.arrival_dispersion + 3.0)]
    room_ms = slack_ms - mem_ms
    for ci in range(min(view.n_clusters, MAX_CLUSTERS)):
        frac = view.freq_frac[ci]
        required = (0.0 if slack_ms == math.inf else 1.0 if room_ms <= 0.0
                    else min(compute[ci] / room_ms / 1.5, 1.0))
        cap = 1.0 if ctx.cap_opp is None else frac[min(int(ctx.cap_opp[ci]), len(frac) - 1)]
        sf, se = (frac[0], 1.0) if safe is None else (safe.freq[ci], safe.energy[ci])  # type: ignore[attr-defined]
        feats += [1.0, view.capacity[ci], frac[ctx.cur_opp[ci]], required,
                  math.tanh(view.transition_s[ci] * 1000.0 / top_ms), view.efficient_frac[ci],
                  view.cost_ratio[ci], cap, sf, se]
    feats += [0.0] * len(CLUSTER_FEATURES) * (MAX_CLUSTERS - min(view.n_clusters, MAX_CLUSTERS))
    assert len(feats) == len(GLOBAL_FEATURES) + MAX_CLUSTERS * len(CLUSTER_FEATURES)
    return feats


@pytest.mark.parametrize("name", ["rk3399", "rk3588", "bcm2711"])
def test_the_observation_is_its_features_written_out(name: str) -> None:
    view = BoardView.of(load_profile(name))
    safe_set = SafeSet()
    for ctx in _contexts(name, 300, seed=11):
        safe = safe_set.compute(view, ctx)
        for s in (safe, None):
            want = np.array(_plain_observation(view, ctx, s), dtype=np.float32)
            assert build_observation(view, ctx, s).tobytes() == want.tobytes()


def test_the_learned_policys_cached_safe_bias_decides_as_the_plain_one() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        make_random_policy(Path(tmp) / "p", hidden=(32, 32))
        policy = load_learned(Path(tmp) / "p.npz")
        plain = load_learned(Path(tmp) / "p.npz")
    view = BoardView.of(load_profile("rk3399"))
    policy.reset(view)
    plain.reset(view)
    for ctx in _contexts("rk3399", 600, seed=5):
        got = policy.decide(view, ctx)
        safe = plain._safe_set.compute(view, ctx)
        logits = plain.forward(build_observation(view, ctx, safe)).copy()
        logits[view.mask == 0] = np.float32(-1e30)
        logits[safe.mask == 0] = np.float32(-1e30)
        assert safe.mask[int(np.argmax(logits))] == 1
        assert got == view.decode(int(np.argmax(logits)))
