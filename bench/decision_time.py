"""Time one learned-policy decision (the safe set, i.e. slack's bounds over every option, then
observation + forward pass + masked argmax + decode).

Prints JSON: {"decision_us_p50", "decision_us_p99", "forward_us_p50", "forward_us_p99", ...}.
Run: python bench/decision_time.py [--hidden 128,128] [--n 20000] [--profile rk3399]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesched.device import load_profile
from edgesched.observation import BoardView, DecisionContext, build_observation
from edgesched.policy.learned import load_learned, make_random_policy


def _pct(samples_ns: list[int], q: float) -> float:
    s = sorted(samples_ns)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)] / 1000.0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", default="128,128")
    ap.add_argument("--activation", default="tanh", choices=("tanh", "relu"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--profile", default="rk3399")
    args = ap.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    profile = load_profile(args.profile)
    view = BoardView.of(profile)
    with tempfile.TemporaryDirectory() as tmp:
        make_random_policy(Path(tmp) / "bench", hidden=hidden, activation=args.activation)
        policy = load_learned(Path(tmp) / "bench.npz")
    policy.reset(view)
    work = profile.work_from_top_latency(20.0)
    rng = np.random.default_rng(0)
    ctxs = [DecisionContext(now_s=1.0, head_priority=int(rng.integers(0, 3)),
                            head_deadline_s=1.0 + float(rng.uniform(0.005, 0.2)), head_work=work,
                            levels=3, queue_len=int(rng.integers(0, 20)),
                            urgent_waiting=int(rng.integers(0, 5)),
                            backlog_ms=float(rng.uniform(0, 100)),
                            earliest_deadline_s=1.0 + float(rng.uniform(0.005, 0.3)),
                            cur_opp=[0] * len(profile.clusters), arrival_rate_hz=20.0,
                            utilisation=0.5, util_by_cluster=[0.5] * len(profile.clusters),
                            busy_fraction_by_cluster=[0.5] * len(profile.clusters))
            for _ in range(256)]
    obs = [build_observation(view, c) for c in ctxs]
    clock = time.perf_counter_ns
    for c in ctxs:  # warm up
        policy.decide(view, c)
    dec: list[int] = []
    fwd: list[int] = []
    obs_t: list[int] = []
    for i in range(args.n):
        c = ctxs[i & 255]
        t0 = clock()
        policy.decide(view, c)
        t1 = clock()
        policy.action(view, obs[i & 255])
        t2 = clock()
        build_observation(view, c)
        t3 = clock()
        dec.append(t1 - t0)
        fwd.append(t2 - t1)
        obs_t.append(t3 - t2)
    print(json.dumps({
        "decision_us_p50": _pct(dec, 0.50), "decision_us_p99": _pct(dec, 0.99),
        "forward_us_p50": _pct(fwd, 0.50), "forward_us_p99": _pct(fwd, 0.99),
        "observation_us_p50": _pct(obs_t, 0.50), "observation_us_p99": _pct(obs_t, 0.99),
        "hidden": list(hidden), "activation": args.activation, "n": args.n,
    }))


if __name__ == "__main__":
    main()
