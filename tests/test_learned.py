"""The learned policy runtime: file checks, forward pass against a plain numpy reference, mask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgesched.device import load_profile
from edgesched.errors import PolicyError, PolicyMismatchError
from edgesched.observation import (
    N_ACTIONS,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    BoardView,
    DecisionContext,
    build_observation,
)
from edgesched.policy.base import Policy
from edgesched.policy.learned import (
    BLOCKING_SHARE,
    LearnedPolicy,
    load_learned,
    make_random_policy,
    policy_paths,
    save_learned,
)
from edgesched.policy.safe import SafeSet


def reference(npz: Path, obs: np.ndarray, activation: str) -> np.ndarray:
    """The forward pass written the obvious way, in float64."""
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k].astype(np.float64) for k in f.files}
    x = obs.astype(np.float64)
    if "obs_mean" in arrays:
        x = np.clip((x - arrays["obs_mean"]) / arrays["obs_std"], -10.0, 10.0)
    n = sum(1 for k in arrays if k.startswith("W"))
    for i in range(n):
        x = x @ arrays[f"W{i}"] + arrays[f"b{i}"]
        if i < n - 1:
            x = np.tanh(x) if activation == "tanh" else np.maximum(x, 0.0)
    return x


def context(profile_name: str = "rk3399", slack_s: float = 0.05) -> DecisionContext:
    profile = load_profile(profile_name)
    n = len(profile.clusters)
    return DecisionContext(now_s=1.0, head_priority=1, head_deadline_s=1.0 + slack_s,
                           head_work=profile.work_from_top_latency(10.0), levels=3, queue_len=2,
                           urgent_waiting=1, backlog_ms=5.0, earliest_deadline_s=1.2,
                           cur_opp=[0] * n, arrival_rate_hz=10.0, utilisation=0.3,
                           util_by_cluster=[0.3] * n, busy_fraction_by_cluster=[0.3] * n)


@pytest.mark.parametrize(("activation", "hidden"), [("tanh", (64, 64)), ("relu", (32,)),
                                                    ("tanh", ())])
def test_forward_pass_equals_numpy_reference(tmp_path: Path, activation: str,
                                             hidden: tuple[int, ...]) -> None:
    make_random_policy(tmp_path / "p", hidden=hidden, activation=activation, seed=3)
    policy = load_learned(tmp_path / "p.npz")
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = rng.uniform(OBS_LOW, OBS_HIGH).astype(np.float32)
        got = policy.forward(obs).copy()
        assert got.shape == (N_ACTIONS,)
        np.testing.assert_allclose(got, reference(tmp_path / "p.npz", obs, activation),
                                   rtol=1e-4, atol=1e-5)


def test_observation_normalisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    layers = [(rng.normal(size=(OBS_DIM, 16)), rng.normal(size=16)),
              (rng.normal(size=(16, N_ACTIONS)), rng.normal(size=N_ACTIONS))]
    mean, std = rng.normal(size=OBS_DIM), rng.uniform(0.1, 2.0, OBS_DIM)
    save_learned(tmp_path / "n", layers, {"devices": ["rk3399"], "algo": "ppo", "seed": 1},
                 obs_norm=(mean, std))
    policy = load_learned(tmp_path / "n.json")
    obs = rng.uniform(OBS_LOW, OBS_HIGH).astype(np.float32)
    np.testing.assert_allclose(policy.forward(obs), reference(tmp_path / "n.npz", obs, "tanh"),
                               rtol=1e-4, atol=1e-4)


def test_decide_takes_the_best_unmasked_action(tmp_path: Path) -> None:
    view = BoardView.of(load_profile("bcm2711"))  # one cluster: actions 20..39 are masked
    masked = np.flatnonzero(view.mask == 0)
    allowed = np.flatnonzero(view.mask)
    bias = np.zeros(N_ACTIONS)
    bias[masked[-1]] = 100.0  # the largest logit belongs to a masked action
    bias[allowed[3]] = 50.0
    layers = [(np.zeros((OBS_DIM, N_ACTIONS)), bias)]
    save_learned(tmp_path / "m", layers, {"devices": ["bcm2711"], "algo": "test", "seed": 0})
    policy = load_learned(tmp_path / "m", device_name="bcm2711")
    policy.safe_only = False
    assert isinstance(policy, Policy)
    policy.reset(view)
    assert int(np.argmax(policy.forward(np.zeros(OBS_DIM, np.float32)))) == masked[-1]
    decision = policy.decide(view, context("bcm2711"))
    assert decision == view.decode(int(allowed[3]))
    assert policy.name == "learned:m" and policy.trained_on == ("bcm2711",)


def test_decide_matches_reference_on_real_observations(tmp_path: Path) -> None:
    make_random_policy(tmp_path / "r", seed=7)
    policy = load_learned(tmp_path / "r")
    policy.safe_only = False  # the network's own choice (the safe set is tested below)
    for name in ("rk3399", "bcm2711", "rk3588"):
        view = BoardView.of(load_profile(name))
        for slack_s in (0.001, 0.02, 0.5):
            ctx = context(name, slack_s)
            policy.reset(view)  # the safe set's state (recent timeouts) starts afresh
            safe = SafeSet().compute(view, ctx)
            logits = reference(tmp_path / "r.npz", build_observation(view, ctx, safe), "tanh")
            logits[view.mask == 0] = -np.inf
            assert policy.decide(view, ctx) == view.decode(int(np.argmax(logits)))


class SlowestFirst:
    """A one-layer network that ranks rk3399's actions slowest first: left alone it always
    picks the slowest, so every faster pick is the safe set's."""

    def __init__(self, tmp_path: Path) -> None:
        self.profile = load_profile("rk3399")
        self.view = BoardView.of(self.profile)
        self.ctx0 = context("rk3399")
        self.allowed = [int(a) for a in np.flatnonzero(self.view.mask)]
        bias = np.full(N_ACTIONS, -1e3)
        for a in self.allowed:
            bias[a] = self.finish_s(a) * 1e3
        save_learned(tmp_path / "slow", [(np.zeros((OBS_DIM, N_ACTIONS)), bias)],
                     {"devices": ["rk3399"], "algo": "test", "seed": 0})
        self.policy = load_learned(tmp_path / "slow")
        self.slowest = max(self.allowed, key=self.finish_s)
        self.fastest = min(self.allowed, key=self.finish_s)

    def finish_s(self, a: int) -> float:
        d = self.view.decode(a)
        switch = self.view.transition_s[d.cluster] if d.opp != self.ctx0.cur_opp[d.cluster] else 0.0
        return self.profile.latency_ms(self.ctx0.head_work, d.cluster, d.opp) / 1000.0 + switch

    def best_within(self, limit_s: float) -> int:
        return max((a for a in self.allowed if self.finish_s(a) <= limit_s), key=self.finish_s)

    def decide(self, slack_s: float, priority: int = 1,
               urgent_timeout_s: float = float("inf")) -> int:
        ctx = context("rk3399", slack_s)
        ctx.head_priority = priority
        ctx.urgent_timeout_s = urgent_timeout_s
        ctx.arrival_rate_hz = 0.0  # no load bound: the deadline and blocking bounds alone
        ctx.queue_len = 0  # nothing waiting behind the head
        return self.view.encode(self.policy.decide(self.view, ctx))


def test_the_safe_set_keeps_a_request_in_time(tmp_path: Path) -> None:
    net = SlowestFirst(tmp_path)
    assert net.finish_s(net.fastest) < 0.015 < net.finish_s(net.slowest)
    assert net.decide(1.0) == net.slowest, "enough time: the network's choice"
    in_time = net.decide(0.015)
    assert net.finish_s(in_time) <= 0.015
    assert in_time == net.best_within(0.015), "the best-ranked action that is in time"
    assert net.decide(net.finish_s(net.fastest) / 2) == net.fastest, "none in time: the fastest"
    assert net.decide(0.015, priority=2) == net.best_within(0.015), (
        "a lower priority's own deadline is kept too")
    net.policy.safe_only = False
    assert net.decide(0.015) == net.slowest


def test_the_safe_set_keeps_lower_priority_runs_short_while_priority_1_comes(
        tmp_path: Path) -> None:
    """A run cannot be interrupted: with priority-1 requests of 20 ms timeouts about, a
    priority-2 run is kept within BLOCKING_SHARE of 20 ms when some action allows it."""
    net = SlowestFirst(tmp_path)
    limit_s = 0.020 * BLOCKING_SHARE
    assert net.finish_s(net.fastest) < limit_s < net.finish_s(net.slowest)
    assert net.decide(1.0, priority=2) == net.slowest, "no priority-1 traffic: the network's"
    assert net.decide(1.0, priority=2, urgent_timeout_s=10.0) == net.slowest, "long timeouts"
    short = net.decide(1.0, priority=2, urgent_timeout_s=0.020)
    assert short == net.best_within(limit_s), "the best-ranked action that is short enough"
    assert net.decide(1.0, priority=3, urgent_timeout_s=net.finish_s(net.fastest) / 2) == (
        net.fastest), "none short enough: the fastest"
    net.policy.safe_only = False
    assert net.decide(1.0, priority=2, urgent_timeout_s=0.020) == net.slowest


@pytest.mark.parametrize(("key", "value", "what"), [
    ("obs_version", 999, "obs_version is 999"),
    ("action_map", "cluster*10+level", "action_map is 'cluster*10+level'"),
    ("n_actions", 7, "n_actions is 7"),
    ("obs_dim", 3, "obs_dim is 3"),
])
def test_manifest_mismatch_is_refused(tmp_path: Path, key: str, value: object, what: str) -> None:
    man = make_random_policy(tmp_path / "p")
    doc = json.loads(man.read_text())
    doc[key] = value
    man.write_text(json.dumps(doc))
    with pytest.raises(PolicyMismatchError) as info:
        load_learned(man)
    assert what in str(info.value) and "falls back to the configured baseline" in str(info.value)


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    make_random_policy(tmp_path / "a", seed=1)
    make_random_policy(tmp_path / "b", seed=2)
    policy_paths(tmp_path / "a")[0].write_bytes(policy_paths(tmp_path / "b")[0].read_bytes())
    with pytest.raises(PolicyError, match="do not match the sha256"):
        load_learned(tmp_path / "a")


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    man = make_random_policy(tmp_path / "p")
    npz = policy_paths(tmp_path / "p")[0]
    np.savez(npz, W0=np.array([{"evil": 1}], dtype=object), b0=np.zeros(1))
    doc = json.loads(man.read_text())
    doc["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    man.write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match="cannot load policy weights"):
        load_learned(man)


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_learned(tmp_path / "missing")
    man = make_random_policy(tmp_path / "p")
    doc = json.loads(man.read_text())
    doc["activation"] = "gelu"
    man.write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match="activation 'gelu'"):
        load_learned(man)
    man.write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_learned(man)


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(PolicyError, match="transpose torch weights"):
        LearnedPolicy([(np.zeros((N_ACTIONS, OBS_DIM)), np.zeros(OBS_DIM))], activation="tanh")
    with pytest.raises(PolicyMismatchError, match="actions"):
        LearnedPolicy([(np.zeros((OBS_DIM, 5)), np.zeros(5))], activation="tanh")


def test_save_learned_writes_the_manifest(tmp_path: Path) -> None:
    man = make_random_policy(tmp_path / "sub" / "p", devices=("rk3399", "bcm2711"), seed=5)
    doc = json.loads(man.read_text())
    for key in ("format", "obs_version", "obs_dim", "n_actions", "action_map", "activation",
                "devices", "algo", "seed", "sha256"):
        assert key in doc
    assert doc["format"] == "edgesched-policy/1" and doc["devices"] == ["rk3399", "bcm2711"]
    with pytest.raises(ValueError, match="may not set obs_version"):
        save_learned(tmp_path / "x", [], {"obs_version": 2})
    with pytest.raises(ValueError, match="'algo'"):
        save_learned(tmp_path / "x", [], {"devices": [], "seed": 0})
