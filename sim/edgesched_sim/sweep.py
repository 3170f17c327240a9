"""Hyper-parameter and seed sweeps with Ray Tune: ``edgesched train --sweep``.

Needs the ``train`` extra (``ray[tune]`` beside torch and stable-baselines3); nothing here is
imported by the daemon, and Ray is imported only inside :func:`run_sweep` and the trial.

One trial is one call of :func:`edgesched_sim.train.train` with a configuration drawn from the
search space, followed by :func:`score_policy` on validation seeds that training never uses. The
best trial (lowest score) is written as the usual numpy policy (``NAME.npz`` + ``NAME.json``, the
manifest carrying the trial's configuration and score under ``sweep``), and every trial, its
configuration and its figures go to ``NAME.sweep.json`` beside it.

Search space
------------
Each key is a fixed value or a table with exactly one distribution:
``{choice = [...]}``, ``{uniform = [lo, hi]}``, ``{loguniform = [lo, hi]}`` or
``{randint = [lo, hi]}`` (``hi`` excluded). The keys and their defaults (:data:`DEFAULT_SPACE`):

============== ============================ =====================================
key            default                      meaning
============== ============================ =====================================
learning_rate  loguniform [1e-4, 1e-3]      optimiser step size
n_steps        choice [512, 1024, 2048]     rollout steps per environment (PPO)
batch_size     choice [64, 128, 256]        minibatch size
gamma          uniform [0.85, 0.99]         discount factor
ent_coef       loguniform [1e-3, 3e-2]      entropy bonus (PPO)
width          choice [32, 64, 128]         units in each of the two hidden layers
seed           randint [0, 100000]          seed of the environments and the net
============== ============================ =====================================

A sweep file (``--sweep-config``, TOML or JSON by suffix) overrides keys of the default space
under ``space`` and the scoring under ``score``::

    [space]
    learning_rate = { loguniform = [1e-4, 5e-4] }
    width = 64                       # fixed
    seed = { choice = [0, 1, 2, 3] }

    [score]
    seeds = [2001, 2002, 2003]       # validation job sets (default); never used in training
    duration_s = 30.0
    miss_penalty = { "1" = 1.0, "2" = 0.1, "3" = 0.02 }
    budget_penalty = 1.0

Score
-----
Per run (board x scenario x validation seed) the trial's policy, ``schedutil`` and
``performance`` serve the same job set through :func:`edgesched_sim.evaluate.run_policies`, the
policy behind the run-time miss-budget guard as in ``edgesched eval`` and the daemon
(:class:`edgesched.qos.QosGuard`, the scenario's budgets). The score, lower is better, is::

    mean over runs of energy_j / schedutil's energy_j
    + sum over classes c of miss_penalty[c] * mean over runs of
      max(0, miss rate of c - schedutil's miss rate of c) in percentage points
    + budget_penalty * share of runs in which the policy breaks a class's miss budget
      that performance keeps

so energy counts at equal or fewer misses per class than schedutil and inside the budgets
wherever ``performance`` stays inside them (the two conditions of the project's acceptance
test). Every percentage point of a class's misses above schedutil's costs ``miss_penalty[c]``
(default 1.0 for P1, 0.1 for P2, 0.02 for P3: one extra point of P1 misses weighs as much as
doubling the energy); every run with a broken budget costs ``budget_penalty`` (default 1.0).
The table also gives the share of runs in which the policy dominates schedutil
(:func:`edgesched_sim.evaluate.dominates`) and the share that broke a budget.

Boards: the trials are scored on the training boards; with ``--device random`` (a generated
board per episode) on the shipped profiles, never on the held-out generated boards
(:func:`edgesched_sim.randomise.heldout_boards`), which stay a test set.

Training draws its job-set seeds from the environments' generator (integers up to 2**31); the
validation seeds 2001-2003 are also kept apart from the seeds of ``edgesched train --report``
(1000-1004) and of the published evaluation (1-5), so the sweep never selects on a test set.

Trials run wherever Ray places them, so a trial returns its policy in its result (the ``.npz``
bytes, compressed and base64-encoded): no shared file system is needed between machines.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import EdgeschedError
from edgesched.policy.learned import RESERVED_KEYS, LearnedPolicy, load_learned, save_learned
from edgesched_sim.scenarios import BUILTIN_NAMES
from edgesched_sim.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": {"loguniform": [1e-4, 1e-3]},
    "n_steps": {"choice": [512, 1024, 2048]},
    "batch_size": {"choice": [64, 128, 256]},
    "gamma": {"uniform": [0.85, 0.99]},
    "ent_coef": {"loguniform": [1e-3, 3e-2]},
    "width": {"choice": [32, 64, 128]},
    "seed": {"randint": [0, 100_000]},
}
"""The default search space (see the module notes for the format)."""

DEFAULT_SCORE_SEEDS = (2001, 2002, 2003)
DEFAULT_MISS_PENALTY = {1: 1.0, 2: 0.1, 3: 0.02}
"""Score added per percentage point of a class's misses above schedutil's."""
DEFAULT_BUDGET_PENALTY = 1.0
"""Score added per share of runs that break a miss budget ``performance`` keeps."""

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")

# key -> (integer valued, lowest allowed, highest allowed, whether the lowest is allowed)
_BOUNDS: dict[str, tuple[bool, float, float, bool]] = {
    "learning_rate": (False, 0.0, 1.0, False),
    "n_steps": (True, 2.0, 1e7, True),
    "batch_size": (True, 2.0, 1e7, True),
    "gamma": (False, 0.0, 1.0, False),
    "ent_coef": (False, 0.0, 1.0, True),
    "width": (True, 1.0, 4096.0, True),
    "seed": (True, 0.0, 2.0**31 - 1, True),
}

TRAIN_KEYS = ("learning_rate", "n_steps", "batch_size", "gamma", "ent_coef", "width", "seed")
"""The keys a sweep may search (each a :class:`~edgesched_sim.train.TrainConfig` field, ``width``
giving ``hidden = (width, width)``)."""


class SweepError(EdgeschedError):
    """A sweep that cannot run as asked: a bad sweep file, no Ray, or every trial failed."""


@dataclass
class SweepConfig:
    """What every trial shares, and how the sweep runs and scores."""

    devices: list[str]
    scenarios: list[str] = field(default_factory=lambda: list(BUILTIN_NAMES))
    algo: str = "ppo"
    timesteps: int = 600_000
    n_envs: int = 4
    episode_s: float = 30.0
    trials: int = 8
    cpus_per_trial: float = 1.0
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    score_seeds: tuple[int, ...] = DEFAULT_SCORE_SEEDS
    score_duration_s: float = 30.0
    miss_penalty: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_MISS_PENALTY))
    budget_penalty: float = DEFAULT_BUDGET_PENALTY
    miss_budget: dict[int, float] | None = None
    """Per-class budgets trained as constraints in every trial (``--miss-budget``; see
    :class:`~edgesched_sim.train.TrainConfig`); None: fixed miss weights."""
    sampler_seed: int = 0
    """Seed of the search-space sampler (the same seed draws the same trial configurations)."""


# ---------------------------------------------------------------------------------------------
# the sweep file


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_value(key: str, value: Any, where: str) -> None:
    integer, lo, hi, lo_ok = _BOUNDS[key]
    if not _number(value) or (integer and float(value) != int(value)):
        kind = "an integer" if integer else "a number"
        raise SweepError(f"{where}: {key} must be {kind}, got {value!r}")
    if not ((value >= lo if lo_ok else value > lo) and value <= hi):
        raise SweepError(f"{where}: {key} = {value!r} is out of range; give a value "
                         f"{'>=' if lo_ok else '>'} {lo:g} and <= {hi:g}")


def check_space(space: Mapping[str, Any], where: str = "search space") -> dict[str, Any]:
    """The space validated (keys, distribution names and every value's range); raises
    :class:`SweepError` with what to change."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if key not in _BOUNDS:
            raise SweepError(f"{where}: unknown key {key!r}; the space may set "
                             f"{', '.join(TRAIN_KEYS)}")
        if not isinstance(spec, Mapping):
            _check_value(key, spec, where)
            out[key] = spec
            continue
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise SweepError(f"{where}: {key} must be a value or a table with exactly one of "
                             f"{', '.join(DISTRIBUTIONS)}, got {dict(spec)!r}")
        (dist, arg), = spec.items()
        if not isinstance(arg, list) or not arg:
            raise SweepError(f"{where}: {key}.{dist} must be a non-empty list, got {arg!r}")
        for v in arg:
            _check_value(key, v, f"{where}: {key}.{dist}")
        if dist != "choice":
            if len(arg) != 2 or not arg[0] < arg[1]:
                raise SweepError(f"{where}: {key}.{dist} must be [low, high] with low < high, "
                                 f"got {arg!r}")
            if dist == "randint" and not _BOUNDS[key][0]:
                raise SweepError(f"{where}: {key} is not an integer; use uniform or loguniform")
            if dist == "loguniform" and arg[0] <= 0:
                raise SweepError(f"{where}: {key}.loguniform needs low > 0, got {arg!r}")
        out[key] = {dist: list(arg)}
    return out


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """Read a sweep file (``.toml`` or ``.json``): ``{"space": {...}, "score": {...}}``, both
    optional, checked."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SweepError(f"{p}: sweep file not found") from None
    except OSError as exc:
        raise SweepError(f"{p}: cannot read the sweep file ({exc.strerror})") from None
    try:
        if p.suffix == ".json":
            doc = json.loads(raw.decode("utf-8"))
        elif p.suffix == ".toml":
            doc = tomllib.loads(raw.decode("utf-8"))
        else:
            raise SweepError(f"{p}: a sweep file ends in .toml or .json")
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and TOMLDecodeError too
        raise SweepError(f"{p}: not valid {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise SweepError(f"{p}: the top level must be a table with 'space' and/or 'score'")
    unknown = sorted(set(doc) - {"space", "score"})
    if unknown:
        raise SweepError(f"{p}: unknown section(s) {', '.join(unknown)}; expected space, score")
    space = doc.get("space", {})
    score = doc.get("score", {})
    if not isinstance(space, dict) or not isinstance(score, dict):
        raise SweepError(f"{p}: 'space' and 'score' must be tables")
    out: dict[str, Any] = {"space": check_space(space, str(p)), "score": {}}
    bad = sorted(set(score) - {"seeds", "duration_s", "miss_penalty", "budget_penalty"})
    if bad:
        raise SweepError(f"{p}: unknown score key(s) {', '.join(bad)}; expected seeds, "
                         "duration_s, miss_penalty, budget_penalty")
    if "seeds" in score:
        seeds = score["seeds"]
        if (not isinstance(seeds, list) or not seeds
                or not all(_number(s) and int(s) == s and s >= 0 for s in seeds)):
            raise SweepError(f"{p}: score.seeds must be a non-empty list of integers >= 0")
        out["score"]["seeds"] = tuple(int(s) for s in seeds)
    if "duration_s" in score:
        d = score["duration_s"]
        if not _number(d) or d <= 0:
            raise SweepError(f"{p}: score.duration_s must be a number > 0, got {d!r}")
        out["score"]["duration_s"] = float(d)
    if "miss_penalty" in score:
        mp = score["miss_penalty"]
        try:
            pen = {int(k): float(v) for k, v in mp.items()}
        except (AttributeError, TypeError, ValueError):
            raise SweepError(f"{p}: score.miss_penalty must map classes to numbers, e.g. "
                             '{ "1" = 1.0, "2" = 0.1, "3" = 0.02 }') from None
        if not all(math.isfinite(v) and v >= 0 for v in pen.values()):
            raise SweepError(f"{p}: score.miss_penalty values must be >= 0")
        out["score"]["miss_penalty"] = pen
    if "budget_penalty" in score:
        bp = score["budget_penalty"]
        if not _number(bp) or bp < 0:
            raise SweepError(f"{p}: score.budget_penalty must be a number >= 0, got {bp!r}")
        out["score"]["budget_penalty"] = float(bp)
    return out


def apply_sweep_file(cfg: SweepConfig, path: str | Path) -> SweepConfig:
    """``cfg`` with the file's space keys over the default ones and its scoring settings."""
    doc = load_sweep_file(path)
    score = doc["score"]
    return replace(cfg, space={**cfg.space, **doc["space"]},
                   score_seeds=score.get("seeds", cfg.score_seeds),
                   score_duration_s=score.get("duration_s", cfg.score_duration_s),
                   miss_penalty=score.get("miss_penalty", cfg.miss_penalty),
                   budget_penalty=score.get("budget_penalty", cfg.budget_penalty))


# ---------------------------------------------------------------------------------------------
# one trial


def trial_train_config(cfg: SweepConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The training configuration of one trial: ``cfg``'s shared settings, ``params`` drawn."""
    base = TrainConfig(devices=list(cfg.devices), scenarios=list(cfg.scenarios), algo=cfg.algo,
                       timesteps=cfg.timesteps, n_envs=cfg.n_envs, episode_s=cfg.episode_s,
                       miss_budget=None if cfg.miss_budget is None else dict(cfg.miss_budget))
    kw: dict[str, Any] = {}
    for key, value in params.items():
        if key == "width":
            kw["hidden"] = (int(value), int(value))
        elif key in ("n_steps", "batch_size", "seed"):
            kw[key] = int(value)
        else:
            kw[key] = float(value)
    return replace(base, **kw)


def score_devices(devices: Sequence[str]) -> list[str]:
    """The boards trials are scored on: the training boards, or for ``random`` the shipped
    profiles (never the held-out generated boards)."""
    from edgesched.device import builtin_profiles
    from edgesched_sim.train import RANDOM_DEVICE

    return [d for d in devices if d != RANDOM_DEVICE] or builtin_profiles()


def score_policy(policy: LearnedPolicy, devices: Sequence[str], scenarios: Sequence[str],
                 seeds: Sequence[int], duration_s: float, miss_penalty: Mapping[int, float],
                 budget_penalty: float = DEFAULT_BUDGET_PENALTY) -> dict[str, Any]:
    """The sweep's score of ``policy`` against schedutil and the miss budgets (see the module
    notes); lower is better."""
    from edgesched_sim.evaluate import dominates, run_policies

    ratios: list[float] = []
    excess: dict[str, list[float]] = {}
    wins = broken = 0
    for dev in devices:
        for sc in scenarios:
            for seed in seeds:
                doc = run_policies(dev, sc, {"learned": policy}, ["schedutil", "performance"],
                                   seed, duration_s)
                rows = {r["policy"]: r for r in doc["results"]}
                mine, ref, perf = rows["learned"], rows["schedutil"], rows["performance"]
                broken += any(not ok and perf["within_budget"].get(c, True)
                              for c, ok in mine["within_budget"].items())
                ratios.append(mine["energy_j"] / ref["energy_j"] if ref["energy_j"] > 0
                              else 1.0)
                classes = set(mine["miss_rate_by_priority"]) | set(ref["miss_rate_by_priority"])
                for c in classes:
                    over = (mine["miss_rate_by_priority"].get(c, 0.0)
                            - ref["miss_rate_by_priority"].get(c, 0.0))
                    excess.setdefault(c, []).append(max(0.0, over) * 100.0)
                wins += dominates(mine, ref)
    runs = len(ratios)
    excess_pp = {c: float(sum(v) / runs) for c, v in sorted(excess.items())}
    over_budget = broken / runs
    penalty = (sum(miss_penalty.get(int(c), 0.0) * v for c, v in excess_pp.items())
               + budget_penalty * over_budget)
    energy = float(np.mean(ratios))
    return {"score": energy + penalty, "energy_vs_schedutil": energy, "penalty": penalty,
            "excess_miss_pp": excess_pp, "over_budget_share": over_budget,
            "dominates_share": wins / runs, "runs": runs}


def _encode(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def _decode(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text.encode("ascii")))


def run_trial(cfg: SweepConfig, params: Mapping[str, Any],
              log: Callable[..., Any] = print) -> dict[str, Any]:
    """Train one configuration, score it and return its result: the score's figures, the drawn
    ``params``, the policy's manifest and its ``.npz`` (encoded, see :func:`_decode`)."""
    from edgesched_sim.train import train

    tcfg = trial_train_config(cfg, params)
    with tempfile.TemporaryDirectory(prefix="edgesched-trial-") as tmp:
        man_path = train(tcfg, Path(tmp) / "policy", progress=False, log=log)
        policy = load_learned(man_path)
        npz = man_path.with_suffix(".npz").read_bytes()
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    figures = score_policy(policy, score_devices(cfg.devices), cfg.scenarios, cfg.score_seeds,
                           cfg.score_duration_s, cfg.miss_penalty, cfg.budget_penalty)
    return {**figures, "params": dict(params), "manifest_json": json.dumps(manifest),
            "policy_npz": _encode(npz)}


def _trainable(config: dict[str, Any], shared: SweepConfig) -> None:
    """The Ray Tune function trainable: one trial (``config``: the drawn values), one report."""
    from ray import tune

    tune.report(run_trial(shared, config, log=lambda *_: None))


# ---------------------------------------------------------------------------------------------
# the sweep


def tune_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray Tune search space of a checked space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if not isinstance(spec, Mapping):
            out[key] = spec
            continue
        (dist, arg), = spec.items()
        if dist == "choice":
            out[key] = tune.choice(list(arg))
        elif dist == "uniform":
            out[key] = tune.uniform(float(arg[0]), float(arg[1]))
        elif dist == "loguniform":
            out[key] = tune.loguniform(float(arg[0]), float(arg[1]))
        else:
            out[key] = tune.randint(int(arg[0]), int(arg[1]))
    return out


QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
}
"""Environment a sweep sets unless already set: no usage statistics, no console progress
tables."""


def _trial_row(index: int, result: Any) -> dict[str, Any]:
    metrics = result.metrics or {}
    row: dict[str, Any] = {"trial": index, "trial_id": metrics.get("trial_id"),
                           "params": dict(result.config or {})}
    if result.error is not None or "score" not in metrics:
        row["error"] = str(result.error or "the trial reported no score").strip().splitlines()[-1]
        return row
    for key in ("score", "energy_vs_schedutil", "penalty", "excess_miss_pp",
                "over_budget_share", "dominates_share", "runs"):
        row[key] = metrics[key]
    row["train_seconds"] = json.loads(metrics["manifest_json"]).get("train_seconds")
    return row


def _export_best(out: str | Path, best: Mapping[str, Any], row: Mapping[str, Any],
                 cfg: SweepConfig, ray_version: str) -> Path:
    """Write the best trial's policy through :func:`save_learned`, the sweep beside the
    training figures in the manifest."""
    with np.load(io.BytesIO(_decode(best["policy_npz"]))) as z:
        n = sum(1 for k in z.files if k.startswith("W"))
        layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]
        norm = (z["obs_mean"], z["obs_std"]) if "obs_mean" in z.files else None
    manifest = json.loads(best["manifest_json"])
    extra = {k: v for k, v in manifest.items() if k not in RESERVED_KEYS}
    extra["versions"] = {**extra.get("versions", {}), "ray": ray_version}
    extra["sweep"] = {"trial": row["trial"], "params": row["params"], "score": row["score"],
                      "energy_vs_schedutil": row["energy_vs_schedutil"],
                      "excess_miss_pp": row["excess_miss_pp"],
                      "over_budget_share": row["over_budget_share"],
                      "dominates_share": row["dominates_share"], "trials": cfg.trials,
                      "score_seeds": list(cfg.score_seeds),
                      "score_duration_s": cfg.score_duration_s,
                      "miss_penalty": {str(k): v for k, v in cfg.miss_penalty.items()},
                      "budget_penalty": cfg.budget_penalty}
    return save_learned(out, layers, extra, obs_norm=norm)


def sweep_table_path(out: str | Path) -> Path:
    p = Path(out)
    if p.suffix in (".npz", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".sweep.json")


def run_sweep(cfg: SweepConfig, out: str | Path, *, ray_address: str | None = None,
              num_cpus: int | None = None, ray_temp_dir: str | Path | None = None,
              log: Callable[..., Any] = print) -> Path:
    """Run ``cfg.trials`` trials with Ray Tune, export the best one to ``out`` and write the
    table to ``NAME.sweep.json``; returns the best policy's manifest path.

    Without ``ray_address`` a local Ray starts (``num_cpus``: its CPUs, default all; no
    dashboard) and is shut down at the end; with it the sweep joins that cluster (``auto``: the
    one started on this machine by ``ray start``) and leaves it running. An already initialised
    Ray (``ray.is_initialized()``) is used as it is.
    """
    from edgesched.device import load_profile
    from edgesched_sim.scenarios import load_scenario
    from edgesched_sim.train import RANDOM_DEVICE

    if RANDOM_DEVICE in cfg.devices and len(cfg.devices) > 1:
        raise SweepError("--device random draws every episode's board; it cannot be combined "
                         "with other --device values")
    for dev in score_devices(cfg.devices):
        load_profile(dev)  # fail with the profile's own message before Ray starts
    for sc in cfg.scenarios:
        load_scenario(sc)
    check_space(cfg.space)
    for key in TRAIN_KEYS:
        if key not in cfg.space:
            raise SweepError(f"search space: {key} is missing; give a value or a distribution")
    try:
        import ray
        from ray import tune
        from ray.tune.search.basic_variant import BasicVariantGenerator
    except ImportError:
        raise SweepError("edgesched train --sweep needs Ray Tune: pip install "
                         "'edgesched[train]'") from None
    started = False
    if not ray.is_initialized():
        for k, v in QUIET_RAY_ENV.items():
            os.environ.setdefault(k, v)
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": logging.WARNING}
        try:
            if ray_address is None:
                ray.init(num_cpus=num_cpus,
                         _temp_dir=None if ray_temp_dir is None else str(ray_temp_dir), **kw)
            else:
                ray.init(address=ray_address, **kw)
        except ConnectionError as exc:
            raise SweepError(f"--ray-address {ray_address}: cannot connect ({exc}); start the "
                             "cluster with 'ray start --head' first") from None
        except OSError as exc:
            raise SweepError(f"cannot start a local Ray ({exc}); Ray's unix socket paths must "
                             "stay under 108 bytes: set RAY_TMPDIR to a short folder such as "
                             "/tmp") from None
        started = True
    try:
        trainable = tune.with_resources(tune.with_parameters(_trainable, shared=cfg),
                                        {"cpu": cfg.cpus_per_trial})
        with tempfile.TemporaryDirectory(prefix="edgesched-sweep-") as storage:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(cfg.space),
                tune_config=tune.TuneConfig(
                    num_samples=cfg.trials,
                    search_alg=BasicVariantGenerator(random_state=cfg.sampler_seed)),
                run_config=tune.RunConfig(name="edgesched-sweep", storage_path=storage,
                                          verbose=0, log_to_file=False),
            )
            grid = tuner.fit()
            results = [grid[i] for i in range(len(grid))]
    finally:
        if started:
            ray.shutdown()
    rows = [_trial_row(i, r) for i, r in enumerate(results)]
    ok = [(row, r.metrics or {}) for row, r in zip(rows, results, strict=True) if "score" in row]
    if not ok:
        errors = "; ".join(sorted({row["error"] for row in rows}))
        raise SweepError(f"every trial failed: {errors}")
    best_row, best = min(ok, key=lambda x: x[0]["score"])
    manifest = _export_best(out, best, best_row, cfg, ray.__version__)
    table = {
        "best": best_row["trial"], "metric": "score", "mode": "min", "trials": rows,
        "devices": cfg.devices, "scenarios": cfg.scenarios, "algo": cfg.algo,
        "timesteps": cfg.timesteps, "n_envs": cfg.n_envs, "episode_s": cfg.episode_s,
        "space": cfg.space, "score_seeds": list(cfg.score_seeds),
        "score_duration_s": cfg.score_duration_s,
        "miss_penalty": {str(k): v for k, v in cfg.miss_penalty.items()},
        "budget_penalty": cfg.budget_penalty, "score_devices": score_devices(cfg.devices),
        "miss_budget": None if cfg.miss_budget is None else
        {str(k): v for k, v in cfg.miss_budget.items()},
        "sampler_seed": cfg.sampler_seed, "policy": str(manifest),
    }
    table_path = sweep_table_path(out)
    from edgesched_sim.evaluate import dumps_json

    table_path.write_text(dumps_json(table) + "\n", encoding="utf-8")
    failed = len(rows) - len(ok)
    log(f"{len(ok)} of {len(rows)} trials scored" + (f" ({failed} failed)" if failed else "")
        + f"; best {best_row['trial']}: score {best_row['score']:.3f} (energy "
        f"{best_row['energy_vs_schedutil']:.3f}x schedutil)")
    return manifest


__all__ = ["DEFAULT_BUDGET_PENALTY", "DEFAULT_MISS_PENALTY", "DEFAULT_SCORE_SEEDS",
           "DEFAULT_SPACE", "TRAIN_KEYS", "SweepConfig", "SweepError", "apply_sweep_file",
           "check_space", "load_sweep_file", "run_sweep", "run_trial", "score_devices",
           "score_policy", "sweep_table_path", "trial_train_config"]
