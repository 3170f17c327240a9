"""Evaluation reports for a policy file: every built-in scenario x 5 seeds against every baseline.

``write_report(policy, devices)`` writes ``NAME.eval.json`` and ``NAME.eval.png`` beside the
policy. Figures per device: mean over scenarios and seeds of each policy's energy per inference,
its ratio to schedutil's and to the oracle's, and the miss rates (overall and priority 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgesched_sim.evaluate import evaluate
from edgesched_sim.scenarios import BUILTIN_NAMES

BASELINES = ("performance", "powersave", "ondemand", "conservative", "schedutil", "qlearn", "oracle")


def evaluate_policy(spec: str, devices: Sequence[str], scenarios: Sequence[str] = BUILTIN_NAMES,
                    seeds: Sequence[int] = (1000, 1001, 1002, 1003, 1004),
                    baselines: Sequence[str] = BASELINES, duration_s: float | None = None,
                    ) -> dict[str, Any]:
    per_device: dict[str, Any] = {}
    for dev in devices:
        runs = [evaluate(dev, sc, [spec, *baselines], seed=seed, duration_s=duration_s)
                for sc in scenarios for seed in seeds]
        names = [r["policy"] for r in runs[0]["results"]]
        table: dict[str, dict[str, float]] = {}
        for i, name in enumerate(names):
            epi = [r["results"][i]["energy_per_inference_j"] for r in runs]
            sched = [r["results"][names.index("schedutil")]["energy_per_inference_j"] for r in runs]
            floor = ([r["results"][names.index("oracle")]["energy_per_inference_j"] for r in runs]
                     if "oracle" in names else epi)
            table["learned" if name == spec else name] = {
                "energy_per_inference_j": float(np.mean(epi)),
                "vs_schedutil": float(np.mean(np.array(epi) / np.array(sched))),
                "vs_oracle": float(np.mean(np.array(epi) / np.array(floor))),
                "miss_rate": float(np.mean([r["results"][i]["deadline_miss_rate"] for r in runs])),
                "p1_miss_rate": float(np.mean([r["results"][i]["miss_rate_by_priority"].get("1", 0.0)
                                               for r in runs])),
            }
        per_device[dev] = {"summary": table, "runs": runs}
    return {"policy": spec, "scenarios": list(scenarios), "seeds": list(seeds),
            "devices": per_device}


def plot_report(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = list(doc["devices"])
    fig, axes = plt.subplots(1, len(devs), figsize=(5.2 * len(devs), 4.2), squeeze=False)
    for ax, dev in zip(axes[0], devs, strict=True):
        for name, row in doc["devices"][dev]["summary"].items():
            x, y = row["miss_rate"] * 100, row["energy_per_inference_j"] * 1000
            ax.scatter([x], [y], s=50 if name == "learned" else 30,
                       marker="*" if name == "learned" else "o")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_title(f"{dev}: mean over scenarios x seeds")
        ax.set_xlabel("deadline-miss rate (%)")
        ax.set_ylabel("energy per inference (mJ)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(policy_path: str | Path, devices: Sequence[str]) -> Path:
    base = Path(policy_path).with_suffix("")
    doc = evaluate_policy(f"learned:{base}.npz", devices)
    out = Path(f"{base}.eval.json")
    slim = {**doc, "devices": {d: {"summary": v["summary"], "runs": v["runs"]}
                               for d, v in doc["devices"].items()}}
    out.write_text(json.dumps(slim, indent=1) + "\n", encoding="utf-8")
    plot_report(doc, Path(f"{base}.eval.png"))
    return out
