"""Training: a tiny SB3 run per algorithm, the numpy export matches SB3's actions, and the same
seed gives the same policy file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="training extra not installed: pip install '.[train]'")

from edgesched.observation import OBS_DIM
from edgesched.policy.learned import load_learned
from edgesched_sim.train import TrainConfig, numpy_actions, train


def _tiny(algo: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(devices=["rk3399", "bcm2711"], scenarios=["bursty"], algo=algo,
                       timesteps=1024, seed=seed, n_envs=2, n_steps=256, batch_size=128,
                       episode_s=5.0)


@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo", "dqn"])
def test_numpy_forward_matches_sb3(tmp_path: Path, algo: str) -> None:
    import torch

    out = tmp_path / algo
    captured: dict[str, object] = {}
    import edgesched_sim.train as tr

    real = tr.export_layers

    def spy(model: object, a: str):  # keep the trained model to compare against
        captured["model"] = model
        return real(model, a)

    tr.export_layers = spy
    try:
        train(_tiny(algo), out, progress=False, log=lambda *_: None)
    finally:
        tr.export_layers = real
    model = captured["model"]
    obs = np.random.default_rng(1).uniform(-1, 1, size=(200, OBS_DIM)).astype(np.float32)
    with torch.no_grad():
        if algo == "dqn":
            ref = model.q_net(torch.as_tensor(obs)).argmax(dim=1).numpy()
        else:
            dist = model.policy.get_distribution(torch.as_tensor(obs))
            ref = dist.distribution.logits.argmax(dim=1).numpy()
    assert np.array_equal(numpy_actions(out, obs), ref)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["algo"] == algo and manifest["devices"] == ["rk3399", "bcm2711"]
    assert "torch" in manifest["versions"] and manifest["seed"] == 0
    load_learned(out)  # the daemon's loader accepts it


def test_same_seed_same_file(tmp_path: Path) -> None:
    a = train(_tiny("ppo", seed=5), tmp_path / "a", progress=False, log=lambda *_: None)
    b = train(_tiny("ppo", seed=5), tmp_path / "b", progress=False, log=lambda *_: None)
    ha = json.loads(a.read_text())["sha256"]
    hb = json.loads(b.read_text())["sha256"]
    assert ha == hb
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
