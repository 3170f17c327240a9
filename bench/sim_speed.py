"""Simulator speed: env steps per second under a random policy, on one core.

Prints one JSON object: {"steps_per_s": float, "steps": int, "device": str, "scenario": str,
"episodes": int}. Goal: >= 50,000 steps/s; below 20,000 is not acceptable.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from edgesched_sim.env import EdgeDVFSEnv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--device", default="rk3399")
    ap.add_argument("--scenario", default="steady-heavy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    env = EdgeDVFSEnv(devices=[args.device], scenarios=[args.scenario], duration_s=60.0)
    env.reset(seed=args.seed)
    actions = np.random.default_rng(args.seed).integers(0, env.action_space.n,
                                                        size=args.steps).tolist()
    episodes = 0
    step = env.step
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            env.reset()
            episodes += 1
    dt = time.perf_counter() - t0
    print(json.dumps({"steps_per_s": args.steps / dt, "steps": args.steps, "device": args.device,
                      "scenario": args.scenario, "episodes": episodes}))


if __name__ == "__main__":
    main()
