"""Evaluation reports for a policy file: every built-in scenario x 5 seeds against every baseline.

``write_report(policy, devices)`` writes ``NAME.eval.json`` and ``NAME.eval.png`` beside the
policy. The document carries ``feasible`` (true only when every job set of every device passes
the processor-demand test, :func:`edgesched_sim.oracle.demand_test`) and, per device:

- ``summary``: per policy, means over scenarios and seeds of energy per request served in time
  (``energy_per_served_j``, also as ``energy_per_inference_j``) and per request received, its
  ratio to schedutil's (``vs_schedutil``) and to its own floor (``vs_oracle``: the mean of the
  rows' ``energy_j / floor_j``, each row's floor being that of the requests it served in time;
  ``None`` when no oracle ran), the miss rates overall and per class and ``runs_by_cluster``;
- ``iso_qos``: per scenario and policy, energy and the misses of every class summed over the
  seeds, whether the policy dominates schedutil there (energy lower, misses no higher in every
  class) and the share of the schedutil-to-floor energy gap it closes, over the feasible job sets
  only (``None`` when none is feasible or no oracle ran);
- ``feasible_sets``: how many of the device's job sets are feasible, of how many.

A figure with no finite value (a policy that served nothing has no energy per request served)
is ``None`` in the summaries and ``null`` in the file, never ``Infinity`` or ``NaN``.

The plot is a Pareto view per priority class, one row of panels per device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgesched_sim.evaluate import (
    REFERENCE,
    dominates,
    dumps_json,
    evaluate,
    gap_closed,
    json_safe,
    pareto_axes,
)
from edgesched_sim.scenarios import BUILTIN_NAMES

BASELINES = ("performance", "powersave", "ondemand", "conservative", "schedutil", "schedutil-big",
             "slack", "qlearn", "oracle")
"""What a report compares a learned policy with: the kernel baselines as the kernel places work,
schedutil pinned to the fastest cluster (the reports' reference before placement was modelled),
the analytic ``slack`` policy, a Q-learning table and the floor."""
ANALYTIC = "slack"
"""The non-learned policy a learned one has to beat to be worth shipping."""


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or ``None`` when any value has no finite figure (``None``, inf or NaN)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if len(vals) == len(values) and vals else None


def _mean_ratio(num: Sequence[float | None], den: Sequence[float | None]) -> float | None:
    """The mean of ``num[i] / den[i]``, or ``None`` when any pair has no finite ratio."""
    return _mean([a / b if a is not None and b is not None and math.isfinite(a)
                  and math.isfinite(b) and b > 0 else None
                  for a, b in zip(num, den, strict=True)])


def _summary(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    has_ref = REFERENCE in names
    for i, name in enumerate(names):
        rows = [r["results"][i] for r in runs]
        if name == "oracle":
            rows = [r for r in rows if r.get("is_floor")]  # the oracle row means nothing elsewhere
        epi = [r["energy_per_served_j"] for r in rows]
        ratio: float | None = None
        if has_ref and name != "oracle":
            sched = [r["results"][names.index(REFERENCE)]["energy_per_served_j"] for r in runs]
            ratio = _mean_ratio(epi, sched)
        prios = sorted({p for r in rows for p in r["miss_rate_by_priority"]})
        shares = [r["runs_by_cluster"] for r in rows]
        table[name] = {
            "energy_per_inference_j": _mean(epi), "energy_per_served_j": _mean(epi),
            "energy_per_received_j": _mean([r["energy_per_received_j"] for r in rows]),
            "vs_schedutil": ratio,
            "vs_oracle": _mean([r["vs_oracle"] for r in rows]),
            "miss_rate": _mean([r["deadline_miss_rate"] for r in rows]),
            "p1_miss_rate": _mean([r["miss_rate_by_priority"].get("1", 0.0) for r in rows]),
            # per class over the job sets that have the class
            "miss_rate_by_priority": {p: _mean([r["miss_rate_by_priority"][p] for r in rows
                                                if p in r["miss_rate_by_priority"]])
                                      for p in prios},
            "runs_by_cluster": (np.mean(np.array(shares), axis=0).tolist()
                                if shares and all(x is not None for x in shares) else None),
            "job_sets": len(rows),
        }
    return table


def _total_j(runs: Sequence[dict[str, Any]], name: str) -> float:
    return float(sum(next(x for x in r["results"] if x["policy"] == name)["energy_j"]
                     for r in runs))


def iso_qos_summary(runs: Sequence[dict[str, Any]], reference: str = REFERENCE,
                    ) -> dict[str, dict[str, Any]] | None:
    """Per scenario and policy: summed energy and misses by class, dominance over ``reference``
    and the share of its gap to the floor closed on the feasible job sets. ``None`` without the
    reference policy."""
    out: dict[str, dict[str, Any]] = {}
    for sc in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == sc]
        names = [x["policy"] for x in mine[0]["results"]]
        if reference not in names:
            return None
        totals: dict[str, dict[str, Any]] = {}
        for name in names:
            if name == "oracle":
                continue
            rows = [next(x for x in r["results"] if x["policy"] == name) for r in mine]
            misses: dict[str, int] = {}
            for x in rows:
                for p, k in x["misses_by_priority"].items():
                    misses[p] = misses.get(p, 0) + k
            received = sum(x["received"] for x in rows)
            totals[name] = {"energy_j": float(sum(x["energy_j"] for x in rows)),
                            "misses_by_priority": misses,
                            "miss_rate_by_priority": {p: k / received for p, k in misses.items()}}
        feas = [r for r in mine if r["feasible"] and "oracle" in names]
        for name, t in totals.items():
            t["dominates"] = name != reference and dominates(t, totals[reference])
            if ANALYTIC in totals and name != ANALYTIC:
                t["dominates_slack"] = dominates(t, totals[ANALYTIC])
            t["gap_closed"] = None
            if feas and name != reference:
                t["gap_closed"] = gap_closed(_total_j(feas, name), _total_j(feas, reference),
                                             _total_j(feas, "oracle"))
            t["feasible_sets"] = len(feas)
        out[sc] = totals
    return out


def device_summary(runs: Sequence[dict[str, Any]], rename: dict[str, str] | None = None,
                   ) -> dict[str, Any]:
    """``summary``, ``iso_qos`` and ``feasible_sets`` of one device's runs (``evaluate``
    documents with the same policies), rows renamed by ``rename``."""
    rename = rename or {}
    names = [r["policy"] for r in runs[0]["results"]]
    table = _summary(runs, names)
    iso = iso_qos_summary(runs)
    return {"summary": {rename.get(k, k): v for k, v in table.items()},
            "iso_qos": None if iso is None else {
                sc: {rename.get(k, k): v for k, v in rows.items()} for sc, rows in iso.items()},
            "feasible_sets": [sum(bool(r["feasible"]) for r in runs), len(runs)]}


def evaluate_policy(spec: str, devices: Sequence[str], scenarios: Sequence[str] = BUILTIN_NAMES,
                    seeds: Sequence[int] = (1000, 1001, 1002, 1003, 1004),
                    baselines: Sequence[str] = BASELINES, duration_s: float | None = None,
                    ) -> dict[str, Any]:
    per_device: dict[str, Any] = {}
    for dev in devices:
        runs = [evaluate(dev, sc, [spec, *baselines], seed=seed, duration_s=duration_s)
                for sc in scenarios for seed in seeds]
        per_device[dev] = {**device_summary(runs, {spec: "learned"}), "runs": runs}
    return {"policy": spec, "scenarios": list(scenarios), "seeds": list(seeds),
            "feasible": all(r["feasible"] for d in per_device.values() for r in d["runs"]),
            "devices": per_device}


def plot_report(doc: dict[str, Any], out: Path) -> None:
    """Pareto view per class: mean energy per request received against the class's miss rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = list(doc["devices"])
    prios = sorted({p for d in devs for row in doc["devices"][d]["summary"].values()
                    for p in row["miss_rate_by_priority"]})
    fig, axes = plt.subplots(len(devs), len(prios), figsize=(4.0 * len(prios) + 1.8,
                                                             3.6 * len(devs)), squeeze=False)
    for k, dev in enumerate(devs):
        summary = doc["devices"][dev]["summary"]
        points = [(name, row["energy_per_received_j"] * 1000, row["miss_rate_by_priority"])
                  for name, row in summary.items()
                  if row["energy_per_received_j"] is not None and row["miss_rate"] is not None]
        pareto_axes(list(axes[k]), points, prios, f"{dev}: mJ per request received")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle("mean over scenarios x seeds (oracle: feasible job sets only)")
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.7 / fig.get_figwidth(), 1.0))
    fig.savefig(out, dpi=100)
    plt.close(fig)


def provenance(root: Path | None = None) -> dict[str, Any]:
    """When and from which code a report was made: the UTC date, the git commit of the source
    tree (``None`` outside a checkout) and whether it had uncommitted changes."""
    import datetime
    import subprocess

    root = root or Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "commit": None, "uncommitted_changes": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "edgesched", "sim"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return out
    out["commit"], out["uncommitted_changes"] = commit, bool(dirty)
    return out


def write_report(policy_path: str | Path, devices: Sequence[str]) -> Path:
    base = Path(policy_path).with_suffix("")
    doc = json_safe({"generated": provenance(), **evaluate_policy(f"learned:{base}.npz", devices)})
    out = Path(f"{base}.eval.json")
    out.write_text(dumps_json(doc) + "\n", encoding="utf-8")
    plot_report(doc, Path(f"{base}.eval.png"))
    return out
