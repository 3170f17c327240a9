"""What serving on two lanes could save: an estimate, printed as one JSON object.

The daemon and the simulator run one inference at a time, so a long lower-priority run must stay
short or a higher-class request arriving during it waits past its deadline (docs/figures.md,
"Where the rest of the gap is"). This bench estimates what a second lane would change: the
lowest class goes to its own lane on the lowest-capacity cluster when a higher class has a
window under half of its own ("background"), everything else to a lane on the other clusters,
and the two run at the same time. It is a deliberately simple model, not the simulator:

- each lane is non-preemptive and serves its queue by class, then earliest deadline; a request
  whose deadline passed while queued is dropped (a miss);
- each run takes the least-energy OPP of the lane's clusters that finishes within
  ``--deadline-share`` of the request's window and leaves every request waiting in the lane time
  to finish at the top speed after it; when none does, the fastest;
- energy is the simulator's accounting (every cluster's idle power over the run, plus each run's
  busy power above idle over its latency from the profile's model) without frequency-switch
  costs, PELT or heat, and without the slowdown two runs sharing the memory system would cause:
  it is optimistic.

Per (board, scenario, seed) with a feasible job set, it prints the share of the
schedutil-to-floor energy gap closed by the two lanes and by ``slack-guarded`` on one lane (both
against ``edgesched eval``'s schedutil and floor on the same job set), and the misses of each by
class; ``summary`` pools the gaps. Boards with one cluster are skipped (one lane only).

Usage: python bench/two_lanes.py [--boards rk3399,exynos5422,rk3588]
       [--scenarios steady-light,mixed-priority,azure-conv,steady-heavy] [--seeds 5001,5002]
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from typing import Any

import numpy as np

from edgesched.device import DeviceProfile, load_profile
from edgesched_sim.evaluate import evaluate
from edgesched_sim.scenarios import JobSet, generate, load_scenario
from edgesched_sim.workloads import MODELS


def background_mask(jobs: JobSet) -> np.ndarray:
    """The requests of the lowest class when a higher class has a window under half of theirs."""
    prio = np.asarray(jobs.priority)
    window = jobs.deadline_s - jobs.release_s
    lowest = prio.max() if len(prio) else 0
    higher = prio < lowest
    if not higher.any():
        return np.zeros(len(prio), dtype=bool)
    return (prio == lowest) & (window > 2.0 * window[higher].min())


def _lane(profile: DeviceProfile, jobs: JobSet, members: list[int], clusters: list[int],
          share: float) -> tuple[float, float, dict[int, int]]:
    """(busy energy above idle uW*s, last finish s, misses by class) of one lane."""
    prio = np.asarray(jobs.priority)
    members.sort(key=lambda i: jobs.release_s[i])
    waiting: list[tuple[int, float, int]] = []
    misses: dict[int, int] = {}
    extra_uws = 0.0
    now = 0.0
    k = 0
    while k < len(members) or waiting:
        if not waiting:
            now = max(now, float(jobs.release_s[members[k]]))
        while k < len(members) and jobs.release_s[members[k]] <= now:
            i = members[k]
            heapq.heappush(waiting, (int(prio[i]), float(jobs.deadline_s[i]), i))
            k += 1
        _, deadline, i = heapq.heappop(waiting)
        if now > deadline:
            misses[int(prio[i])] = misses.get(int(prio[i]), 0) + 1
            continue
        work = MODELS[jobs.model[i]].work
        due = jobs.release_s[i] + (deadline - jobs.release_s[i]) * share
        behind = sorted(waiting)
        best: tuple[tuple[int, float], float, float] | None = None
        for c in clusters:
            cl = profile.clusters[c]
            for o in range(len(cl.opps)):
                run_s = profile.latency_ms(work, c, o) / 1000.0
                energy = (cl.busy_power_uw(o, work.threads) - cl.idle_uw) * run_s
                ok = now + run_s <= due
                t = now + run_s
                for _, d2, j in behind if ok else ():
                    t += profile.min_latency_ms(MODELS[jobs.model[j]].work) / 1000.0
                    if t > d2:
                        ok = False
                        break
                key = (0, energy) if ok else (1, run_s)
                if best is None or key < best[0]:
                    best = (key, run_s, energy)
        assert best is not None
        now += best[1]
        extra_uws += best[2]
        if now > deadline:
            misses[int(prio[i])] = misses.get(int(prio[i]), 0) + 1
    return extra_uws, now, misses


def two_lanes(profile: DeviceProfile, jobs: JobSet, duration_s: float,
              share: float) -> tuple[float, dict[int, int]]:
    """(energy J, misses by class) of the job set served on two lanes."""
    caps = [profile.capacity(i) for i in range(len(profile.clusters))]
    slow = int(np.argmin(caps))
    rest = [i for i in range(len(profile.clusters)) if i != slow]
    bg = background_mask(jobs)
    extra_uws, end_s = 0.0, 0.0
    misses: dict[int, int] = {}
    for members, clusters in ((np.flatnonzero(bg).tolist(), [slow]),
                              (np.flatnonzero(~bg).tolist(), rest)):
        e, t, m = _lane(profile, jobs, members, clusters, share)
        extra_uws += e
        end_s = max(end_s, t)
        for p, n in m.items():
            misses[p] = misses.get(p, 0) + n
    return (profile.idle_power_uw * max(duration_s, end_s) + extra_uws) * 1e-6, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", default="rk3399,exynos5422,rk3588")
    ap.add_argument("--scenarios", default="steady-light,mixed-priority,azure-conv,steady-heavy")
    ap.add_argument("--seeds", default="5001,5002")
    ap.add_argument("--deadline-share", type=float, default=0.9)
    args = ap.parse_args(argv)
    runs: list[dict[str, Any]] = []
    gap = closed_two = closed_one = 0.0
    for board in args.boards.split(","):
        profile = load_profile(board)
        if len(profile.clusters) < 2:
            continue
        for name in args.scenarios.split(","):
            sc = load_scenario(name)
            for seed in (int(s) for s in args.seeds.split(",")):
                doc = evaluate(profile, sc, ["schedutil", "slack-guarded", "oracle"], seed=seed)
                if not doc["feasible"]:
                    continue
                rows = {r["policy"]: r for r in doc["results"]}
                su = rows["schedutil"]["energy_j"]
                floor = rows["oracle"]["energy_j"]
                one = rows["slack-guarded"]["energy_j"]
                jobs = generate(sc, seed, sc.duration_s)
                two, misses = two_lanes(profile, jobs, sc.duration_s, args.deadline_share)
                gap += su - floor
                closed_one += su - one
                closed_two += su - two
                runs.append({
                    "board": profile.name, "scenario": name, "seed": seed,
                    "gap_closed_two_lanes": (su - two) / (su - floor),
                    "gap_closed_slack_guarded": (su - one) / (su - floor),
                    "misses_two_lanes": {str(p): n for p, n in sorted(misses.items())},
                    "misses_slack_guarded": rows["slack-guarded"]["misses_by_priority"],
                    "misses_schedutil": rows["schedutil"]["misses_by_priority"],
                })
    summary = {"runs": len(runs),
               "gap_closed_two_lanes": closed_two / gap if gap > 0 else None,
               "gap_closed_slack_guarded": closed_one / gap if gap > 0 else None}
    json.dump({"summary": summary, "runs": runs}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
