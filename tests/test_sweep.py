"""Training sweeps: the search-space file, the score against schedutil, the CLI's errors, and a
two-trial sweep on a local Ray with two CPUs whose best policy the daemon's loader accepts."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="training extra not installed: pip install '.[train]'")

from edgesched.cli import main
from edgesched.observation import N_ACTIONS, OBS_DIM
from edgesched.policy.learned import LearnedPolicy, load_learned
from edgesched.policy.registry import make_policy
from edgesched_sim.sweep import (
    DEFAULT_SPACE,
    SweepConfig,
    SweepError,
    apply_sweep_file,
    check_space,
    load_sweep_file,
    score_devices,
    score_policy,
    sweep_table_path,
    trial_train_config,
)


def test_sweep_file_overrides_the_default_space(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[space]\nwidth = 32\nseed = { choice = [1, 2] }\n'
                 'gamma = { uniform = [0.9, 0.95] }\n[score]\nseeds = [3001]\nduration_s = 10\n'
                 'miss_penalty = { "1" = 5.0 }\nbudget_penalty = 0.5\n')
    cfg = apply_sweep_file(SweepConfig(devices=["rk3399"]), f)
    assert cfg.space["width"] == 32 and cfg.space["seed"] == {"choice": [1, 2]}
    assert cfg.space["learning_rate"] == DEFAULT_SPACE["learning_rate"]  # untouched keys stay
    assert cfg.score_seeds == (3001,) and cfg.score_duration_s == 10.0
    assert cfg.miss_penalty == {1: 5.0} and cfg.budget_penalty == 0.5
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"space": {"n_steps": {"choice": [256, 512]}}}))
    assert load_sweep_file(j)["space"] == {"n_steps": {"choice": [256, 512]}}


@pytest.mark.parametrize(("space", "needle"), [
    ({"lr": 1e-3}, "unknown key 'lr'; the space may set learning_rate"),
    ({"gamma": 1.5}, "gamma = 1.5 is out of range"),
    ({"width": 12.5}, "width must be an integer"),
    ({"learning_rate": {"loguniform": [0.01, 0.001]}}, "low < high"),
    ({"ent_coef": {"loguniform": [0.0, 0.1]}}, "loguniform needs low > 0"),
    ({"gamma": {"randint": [0.5, 0.9]}}, "gamma is not an integer"),
    ({"seed": {"normal": [0, 1]}}, "exactly one of choice, uniform, loguniform, randint"),
    ({"batch_size": {"choice": []}}, "must be a non-empty list"),
])
def test_bad_space_says_what_to_change(space: dict[str, object], needle: str) -> None:
    with pytest.raises(SweepError, match=needle.replace("(", r"\(")):
        check_space(space)


def test_bad_sweep_files(tmp_path: Path) -> None:
    cases = {"a.yaml": ("x: 1", "ends in .toml or .json"),
             "b.toml": ("[space\n", "not valid TOML"),
             "c.toml": ("[search]\n", "unknown section(s) search"),
             "d.json": ('{"score": {"seeds": []}}', "non-empty list of integers"),
             "e.json": ('{"score": {"duration_s": 0}}', "duration_s must be a number > 0")}
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SweepError) as exc:
            load_sweep_file(tmp_path / name)
        assert needle in str(exc.value), name
    with pytest.raises(SweepError, match="sweep file not found"):
        load_sweep_file(tmp_path / "missing.toml")


def test_trial_config_maps_the_drawn_values() -> None:
    cfg = SweepConfig(devices=["rk3399"], scenarios=["bursty"], timesteps=1000, n_envs=2)
    t = trial_train_config(cfg, {"learning_rate": 5e-4, "n_steps": 256, "batch_size": 64,
                                 "gamma": 0.95, "ent_coef": 0.0, "width": 24, "seed": 7})
    assert t.hidden == (24, 24) and t.seed == 7 and t.n_steps == 256 and t.batch_size == 64
    assert t.learning_rate == 5e-4 and t.gamma == 0.95 and t.timesteps == 1000 and t.n_envs == 2
    assert t.devices == ["rk3399"] and t.scenarios == ["bursty"] and t.miss_budget is None
    budgeted = SweepConfig(devices=["rk3399"], miss_budget={1: 0.001, 2: 0.01, 3: 0.05})
    assert trial_train_config(budgeted, {}).miss_budget == {1: 0.001, 2: 0.01, 3: 0.05}


def _always(action: int) -> LearnedPolicy:
    """A one-layer policy whose greedy choice is always ``action`` when it is safe, else the
    lowest safe action (all other logits are equal)."""
    w = np.zeros((OBS_DIM, N_ACTIONS), np.float32)
    b = np.zeros(N_ACTIONS, np.float32)
    b[action] = 10.0
    return LearnedPolicy([(w, b)], activation="tanh", name=f"always-{action}")


def test_score_penalises_misses_above_schedutil_and_broken_budgets() -> None:
    # the slowest safe speed of the little cluster saves energy on bursts but misses more P2
    # requests than schedutil, and breaks the P2 budget that performance keeps
    from edgesched_sim.evaluate import run_policies

    slow = _always(0)
    args = (["rk3399"], ["bursty"], [2001], 10.0)
    free = score_policy(slow, *args, miss_penalty={}, budget_penalty=0.0)
    costly = score_policy(slow, *args, miss_penalty={1: 2.0, 2: 0.5}, budget_penalty=3.0)
    doc = run_policies("rk3399", "bursty", {"slow": slow}, ["schedutil", "performance"], 2001,
                       10.0)
    mine, ref, perf = doc["results"]
    over = {c: max(0.0, mine["miss_rate_by_priority"][c] - ref["miss_rate_by_priority"][c]) * 100
            for c in ref["miss_rate_by_priority"]}
    assert over["2"] > 0  # the case the penalties exist for
    assert all(perf["within_budget"].values()) and not all(mine["within_budget"].values())
    assert free["energy_vs_schedutil"] == pytest.approx(mine["energy_j"] / ref["energy_j"])
    assert free["energy_vs_schedutil"] < 1.0 and free["score"] == free["energy_vs_schedutil"]
    assert costly["excess_miss_pp"] == pytest.approx(over) and costly["over_budget_share"] == 1.0
    assert costly["score"] == pytest.approx(free["score"] + 2.0 * over["1"] + 0.5 * over["2"]
                                            + 3.0)
    assert costly["dominates_share"] == 0.0 and costly["runs"] == 1


def test_random_devices_are_scored_on_the_shipped_boards_not_the_held_out_ones() -> None:
    from edgesched.device import builtin_profiles

    assert score_devices(["random"]) == builtin_profiles()
    assert score_devices(["rk3399", "bcm2711"]) == ["rk3399", "bcm2711"]


def test_sweep_options_without_sweep_and_bad_values(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    base = ["train", "--device", "rk3399", "--out", str(tmp_path / "p")]
    assert main([*base, "--ray-address", "auto"]) == 2
    assert "--ray-address is a sweep option; add --sweep" in capsys.readouterr().err
    assert main([*base, "--sweep", "--cpus-per-trial", "0"]) == 2
    assert "--cpus-per-trial must be > 0" in capsys.readouterr().err
    assert main([*base, "--sweep", "--eval-every", "100"]) == 2
    assert "--eval-every is not available with --sweep" in capsys.readouterr().err
    bad = tmp_path / "s.toml"
    bad.write_text("[space]\nwidth = 0\n")
    assert main([*base, "--sweep", "--sweep-config", str(bad)]) == 2
    assert "width = 0 is out of range" in capsys.readouterr().err
    assert not list(tmp_path.glob("p*"))  # nothing written, no Ray started


@pytest.fixture
def local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Quiet, local-only Ray settings; Ray is shut down afterwards even if the test failed."""
    # token authentication with a token of this test's own: nothing written to ~/.ray
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                 "RAY_AIR_NEW_OUTPUT": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
                 "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "token",
                 "RAY_AUTH_TOKEN": secrets.token_hex(32)}.items():
        monkeypatch.setenv(k, v)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    # imported after the environment is set: Ray reads its authentication mode once
    ray = pytest.importorskip("ray", reason="Ray Tune not installed: pip install '.[train]'")
    temp = tmp_path / "ray"
    temp.mkdir()
    # Ray's unix sockets live under its temp dir, and a socket path is limited to 107 bytes:
    # a short link in the system temp dir names the folder under tmp_path
    link = Path(tempfile.mkdtemp(prefix="esr-")) / "r"
    link.symlink_to(temp)
    try:
        yield link
    finally:
        ray.shutdown()
        link.unlink()
        link.parent.rmdir()


def test_two_trial_sweep_on_local_ray(tmp_path: Path, local_ray: Path) -> None:
    from edgesched_sim.sweep import run_sweep

    space = {**DEFAULT_SPACE, "n_steps": 128, "batch_size": 64, "width": 16}
    cfg = SweepConfig(devices=["rk3399"], scenarios=["bursty"], timesteps=256, n_envs=1,
                      episode_s=3.0, trials=2, cpus_per_trial=1, space=space,
                      score_seeds=(2001,), score_duration_s=3.0)
    out = tmp_path / "out" / "swept"
    lines: list[str] = []
    manifest_path = run_sweep(cfg, out, num_cpus=2, ray_temp_dir=local_ray, log=lines.append)

    policy = make_policy(f"learned:{out}.npz")  # the daemon's registry loads it
    assert isinstance(policy, LearnedPolicy)
    load_learned(manifest_path)
    table = json.loads(sweep_table_path(out).read_text())
    trials = table["trials"]
    assert len(trials) == 2 and all("score" in t for t in trials)
    assert trials[0]["params"] != trials[1]["params"]  # two different draws
    best = min(trials, key=lambda t: t["score"])
    assert table["best"] == best["trial"]
    manifest = json.loads(manifest_path.read_text())
    assert manifest["sweep"]["params"] == best["params"]
    assert manifest["sweep"]["score"] == best["score"]
    assert manifest["seed"] == best["params"]["seed"] and manifest["layers"][0] == [OBS_DIM, 16]
    assert "ray" in manifest["versions"] and "2 of 2 trials scored" in lines[-1]


def test_importing_the_sweep_and_the_cli_imports_neither_ray_nor_torch() -> None:
    code = ("import sys, edgesched.cli, edgesched.commands.train, edgesched_sim.sweep; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_address_without_a_cluster_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray Tune not installed: pip install '.[train]'")
    # a folder of this test's own as Ray's temp dir: 'auto' finds no cluster address file there
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "edgesched.cli", "train", "--sweep", "--ray-address", "auto",
           "--device", "rk3399", "--trials", "1", "--out", str(tmp_path / "p")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--ray-address auto: cannot connect" in out.stderr
    assert "ray start --head" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.glob("p*"))
