"""Training learned policies with stable-baselines3 in the simulator, and exporting them to numpy.

Needs the ``train`` extra (``pip install 'edgesched[train]'``); nothing here is imported by the
daemon. A trained policy is written as ``NAME.npz`` + ``NAME.json`` through
:func:`edgesched.policy.learned.save_learned` (weights and a manifest, never a pickle).

Several ``--device`` values (or ``--device all``) give domain randomisation: each episode picks a
board and a scenario, so one ``generic`` policy runs on any profile. ``--device random`` goes
further: each episode draws a new generated board and workload
(:class:`edgesched_sim.randomise.TrainingSampler`; never one of the held-out boards), with as
many clusters as the observation encodes.

Miss budgets as constraints (``miss_budget``, ``edgesched train --miss-budget``): a Lagrangian
method on PPO. The reward is ``-energy - sum_k lambda_k * misses_k``; after every rollout a
callback takes each class's miss rate over the episodes that ended in it and moves the class's
multiplier by :meth:`edgesched.qos.LagrangeMultipliers.update` (up while the class misses more
than its budget, down while it stays inside), then sets it in every environment. The multipliers
start from ``miss_weight`` and their history is kept in the manifest (``lagrange``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.device import builtin_profiles, load_profile
from edgesched.observation import N_ACTIONS, OBS_DIM, check_observable
from edgesched.policy.learned import LearnedPolicy, load_learned, save_learned
from edgesched_sim.env import EdgeDVFSEnv, RewardConfig
from edgesched_sim.scenarios import BUILTIN_NAMES

ALGOS = ("ppo", "maskable-ppo", "dqn")


@dataclass
class TrainConfig:
    devices: list[str]
    scenarios: list[str] = field(default_factory=lambda: list(BUILTIN_NAMES))
    algo: str = "ppo"
    timesteps: int = 600_000
    seed: int = 0
    n_envs: int = 4
    episode_s: float = 30.0
    hidden: tuple[int, ...] = (64, 64)
    learning_rate: float = 3e-4
    n_steps: int = 1024
    batch_size: int = 256
    gamma: float = 0.9
    ent_coef: float = 0.01
    miss_weight: dict[int, float] = field(default_factory=lambda: {1: 50.0, 2: 2.0, 3: 0.5})
    energy_weight: float = 1.0
    eval_every: int = 0
    """Evaluate against schedutil every this many steps (0: never during training)."""
    miss_budget: dict[int, float] | None = None
    """Per-class miss budgets trained as constraints (Lagrangian); None: fixed ``miss_weight``."""
    lagrange_lr: float = 0.5
    builtin_share: float = 0.5
    """With ``--device random``: the share of episodes on a built-in board and scenario
    (``--scenario``) instead of a generated one."""
    imitate_steps: int = 0
    """Warm start: decisions of ``slack`` (the least-energy safe action) to imitate before
    reinforcement learning (0: start from random weights)."""
    imitate_epochs: int = 8
    miss_reference: str | None = None
    """A policy spec (``schedutil``): the Lagrangian keeps each class's miss rate at or under
    that policy's on the same episodes' job sets, instead of under the fixed budgets (the
    budgets, default ones when ``miss_budget`` is None, then only scale the steps)."""
    reference_per_episode: bool = False
    """With ``miss_reference``: the constraint is on each episode (the misses beyond the
    reference's in the same episode, summed over episodes, kept under a tenth of the class's
    budget) rather than on the rollout's pooled miss rates, so a class cannot miss more than the
    reference on one kind of workload because it misses less on another."""


def observable_profiles() -> list[str]:
    """The built-in profiles the observation shows whole (at most ``MAX_CLUSTERS`` clusters):
    ``--device all`` and the evaluation after training use these; a board with more clusters
    (rk3588) is left out, as the policies trained here are refused on it."""
    from edgesched.observation import observable

    return [n for n in builtin_profiles() if observable(load_profile(n))]


def expand_devices(devices: Sequence[str]) -> list[str]:
    out: list[str] = []
    for d in devices:
        out.extend(observable_profiles() if d == "all" else [d])
    return out


RANDOM_DEVICE = "random"
"""``--device random``: a generated board and workload per episode."""


def _make_env(cfg: TrainConfig) -> EdgeDVFSEnv:
    reward = RewardConfig(energy_weight=cfg.energy_weight,
                          miss_weight={int(k): float(v) for k, v in cfg.miss_weight.items()})
    if RANDOM_DEVICE in cfg.devices:
        from edgesched.observation import MAX_CLUSTERS
        from edgesched_sim.randomise import TrainingSampler

        if len(cfg.devices) > 1:
            raise ValueError("--device random draws every episode's board; it cannot be "
                             "combined with other --device values")
        from edgesched_sim.scenarios import load_scenario

        sampler = TrainingSampler(
            max_clusters=MAX_CLUSTERS, duration_s=cfg.episode_s,
            profiles=tuple(load_profile(n) for n in observable_profiles()),
            scenarios=tuple(load_scenario(s) for s in cfg.scenarios),
            builtin_share=cfg.builtin_share)
        return EdgeDVFSEnv(devices=("rk3399",), scenarios=cfg.scenarios,
                           duration_s=cfg.episode_s, reward=reward, sampler=sampler,
                           reference=cfg.miss_reference)
    return EdgeDVFSEnv(devices=cfg.devices, scenarios=cfg.scenarios, duration_s=cfg.episode_s,
                       reward=reward, reference=cfg.miss_reference)


def export_layers(model: Any, algo: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(W, b) layers with W as (inputs, outputs), and the activation, from an SB3 model."""
    import torch

    linears: list[torch.nn.Linear] = []
    if algo in ("ppo", "maskable-ppo"):
        pol = model.policy
        linears = [m for m in pol.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
        linears.append(pol.action_net)
        act = pol.mlp_extractor.policy_net[1]
    else:
        net = model.q_net.q_net
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        act = net[1]
    activation = "tanh" if isinstance(act, torch.nn.Tanh) else "relu"
    layers = [(lin.weight.detach().cpu().numpy().T.copy(), lin.bias.detach().cpu().numpy().copy())
              for lin in linears]
    return layers, activation


def _build_model(cfg: TrainConfig, venv: Any, tensorboard_log: str | None) -> Any:
    import torch

    if cfg.algo == "ppo":
        from stable_baselines3 import PPO

        return PPO("MlpPolicy", venv, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
                   batch_size=cfg.batch_size, gamma=cfg.gamma, ent_coef=cfg.ent_coef,
                   policy_kwargs={"net_arch": {"pi": list(cfg.hidden), "vf": list(cfg.hidden)},
                                  "activation_fn": torch.nn.Tanh},
                   seed=cfg.seed, verbose=0, device="cpu", tensorboard_log=tensorboard_log)
    if cfg.algo == "maskable-ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO("MlpPolicy", venv, learning_rate=cfg.learning_rate,
                           n_steps=cfg.n_steps, batch_size=cfg.batch_size, gamma=cfg.gamma,
                           ent_coef=cfg.ent_coef,
                           policy_kwargs={"net_arch": {"pi": list(cfg.hidden),
                                                       "vf": list(cfg.hidden)},
                                          "activation_fn": torch.nn.Tanh},
                           seed=cfg.seed, verbose=0, device="cpu",
                           tensorboard_log=tensorboard_log)
    if cfg.algo == "dqn":
        from stable_baselines3 import DQN

        return DQN("MlpPolicy", venv, learning_rate=cfg.learning_rate, gamma=cfg.gamma,
                   buffer_size=100_000, learning_starts=5_000, batch_size=cfg.batch_size,
                   train_freq=4, target_update_interval=2_000, exploration_fraction=0.3,
                   policy_kwargs={"net_arch": list(cfg.hidden)}, seed=cfg.seed, verbose=0,
                   device="cpu", tensorboard_log=tensorboard_log)
    raise ValueError(f"unknown algo {cfg.algo!r}; expected one of {', '.join(ALGOS)}")


def _policy_from_model(model: Any, algo: str) -> LearnedPolicy:
    layers, activation = export_layers(model, algo)
    return LearnedPolicy(layers, activation=activation, name="learned:training")


def quick_eval(policy: LearnedPolicy, devices: Sequence[str], scenarios: Sequence[str],
               seeds: Sequence[int], duration_s: float) -> dict[str, float]:
    """Energy per inference vs schedutil and priority-1 miss rates, averaged over the grid."""
    from edgesched_sim.evaluate import run_policies

    ratios, p1_l, p1_s = [], [], []
    for dev in devices:
        for sc in scenarios:
            for seed in seeds:
                doc = run_policies(dev, sc, {"learned": policy}, ["schedutil"], seed, duration_s)
                r = {x["policy"]: x for x in doc["results"]}
                ratios.append(r["learned"]["energy_per_inference_j"]
                              / r["schedutil"]["energy_per_inference_j"])
                p1_l.append(r["learned"]["miss_rate_by_priority"].get("1", 0.0))
                p1_s.append(r["schedutil"]["miss_rate_by_priority"].get("1", 0.0))
    return {"energy_vs_schedutil": float(np.mean(ratios)), "p1_miss": float(np.mean(p1_l)),
            "p1_miss_schedutil": float(np.mean(p1_s))}


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = True,
          tensorboard_log: str | None = None, log: Any = print) -> Path:
    """Train, export and write the policy file; returns the manifest path."""
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    for d in cfg.devices:
        if d != RANDOM_DEVICE:
            # fail early with the profile's own message, or the observation's (too many clusters)
            check_observable(load_profile(d), "training")
    venv = DummyVecEnv([lambda: _make_env(cfg) for _ in range(cfg.n_envs)])
    venv.seed(cfg.seed)
    if tensorboard_log:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            log("tensorboard is not installed; training without TensorBoard logs")
            tensorboard_log = None
    model = _build_model(cfg, venv, tensorboard_log)
    history: list[dict[str, float]] = []
    imitation: dict[str, float] = {}
    if cfg.imitate_steps > 0:
        imitation = imitate_slack(model, cfg, log)

    class _Eval(BaseCallback):
        def _on_step(self) -> bool:
            if cfg.eval_every and self.num_timesteps % cfg.eval_every < cfg.n_envs:
                res = quick_eval(_policy_from_model(model, cfg.algo), eval_devices[:3],
                                 cfg.scenarios, [101], 20.0)
                res["timesteps"] = float(self.num_timesteps)
                history.append(res)
                log(f"[{self.num_timesteps}] energy vs schedutil {res['energy_vs_schedutil']:.3f}, "
                    f"p1 miss {res['p1_miss'] * 100:.2f}% (schedutil "
                    f"{res['p1_miss_schedutil'] * 100:.2f}%)")
            return True

    use_bar = progress
    if use_bar:
        try:
            import rich  # noqa: F401
            import tqdm  # noqa: F401
        except ImportError:
            use_bar = False
    t0 = time.perf_counter()
    eval_devices = [d for d in cfg.devices if d != RANDOM_DEVICE] or observable_profiles()
    callbacks: list[Any] = [_Eval()]
    lagrange: list[dict[str, Any]] = []
    if cfg.miss_budget is not None or cfg.miss_reference is not None:
        callbacks.append(lagrange_callback(cfg, venv, lagrange, BaseCallback))
    model.learn(total_timesteps=cfg.timesteps, callback=CallbackList(callbacks),
                progress_bar=use_bar)
    train_s = time.perf_counter() - t0
    layers, activation = export_layers(model, cfg.algo)
    cfg_doc = asdict(cfg)
    cfg_doc["miss_weight"] = {str(k): v for k, v in cfg.miss_weight.items()}
    if cfg.miss_budget is not None:
        cfg_doc["miss_budget"] = {str(k): v for k, v in cfg.miss_budget.items()}
    extra = {
        "activation": activation, "devices": cfg.devices, "scenarios": cfg.scenarios,
        "algo": cfg.algo, "seed": cfg.seed, "training": cfg_doc, "train_seconds": train_s,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__},
        "history": history,
        "lagrange": lagrange,
        "imitation": imitation,
    }
    return save_learned(out, layers, extra)


def imitate_slack(model: Any, cfg: TrainConfig, log: Any = print) -> dict[str, float]:
    """Warm start: fit the policy network to ``slack``'s choices (the least-energy safe action,
    ``SafeActions.best``) on ``cfg.imitate_steps`` decisions of the training distribution, by
    cross-entropy over the safe actions; returns the fit's figures (the share of decisions where
    the network's greedy choice equals slack's, before and after)."""
    import torch

    env = _make_env(cfg)
    obs, _ = env.reset(seed=cfg.seed + 7919)
    xs: list[np.ndarray] = []
    ms: list[np.ndarray] = []
    ys: list[int] = []
    while len(ys) < cfg.imitate_steps:
        safe = env._safe
        assert safe is not None
        xs.append(obs)
        ms.append(safe.mask.astype(bool))
        ys.append(safe.best)
        obs, _, term, trunc, _ = env.step(safe.best)
        if term or trunc:
            obs, _ = env.reset()
    x = torch.as_tensor(np.array(xs), dtype=torch.float32)
    m = torch.as_tensor(np.array(ms))
    y = torch.as_tensor(np.array(ys), dtype=torch.long)
    pol = model.policy

    def logits_of(batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latent_pi = pol.mlp_extractor.forward_actor(pol.extract_features(batch, pol.pi_features_extractor))
        return pol.action_net(latent_pi).masked_fill(~mask, -1e9)

    def agreement() -> float:
        with torch.no_grad():
            return float((logits_of(x, m).argmax(dim=1) == y).float().mean())

    before = agreement()
    opt = torch.optim.Adam(pol.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(y)
    for _ in range(cfg.imitate_epochs):
        for idx in torch.randperm(n, generator=gen).split(512):
            loss = torch.nn.functional.cross_entropy(logits_of(x[idx], m[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = agreement()
    log(f"imitation of slack on {n} decisions: agreement {before:.3f} -> {after:.3f}")
    return {"decisions": float(n), "agreement_before": before, "agreement_after": after}


def lagrange_callback(cfg: TrainConfig, venv: Any, updates: list[dict[str, Any]],
                      base: type) -> Any:
    """The SB3 callback of the Lagrangian method (see the module notes); ``updates`` gets one entry
    per update: the timestep, the rollout's per-class miss rates and the new multipliers."""
    from edgesched.qos import LagrangeMultipliers, MissBudget

    if cfg.miss_budget is None and cfg.miss_reference is None:
        raise ValueError("lagrange_callback needs cfg.miss_budget or cfg.miss_reference")
    budget = (MissBudget() if cfg.miss_budget is None else
              MissBudget(**{f"p{k}": float(v) for k, v in cfg.miss_budget.items()
                            if k in (1, 2, 3)}))
    mult = LagrangeMultipliers(budget=budget, lr=cfg.lagrange_lr,
                               values={int(k): float(v) for k, v in cfg.miss_weight.items()})

    class _Lagrange(base):
        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[int, list[int]] = {}
            self.ref_counts: dict[int, list[int]] = {}
            self.excess: dict[int, list[int]] = {}

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                mine, ref = info.get("class_outcomes"), info.get("class_outcomes_reference")
                if mine is not None and ref is not None:
                    for p, (missed, n) in mine.items():
                        cell = self.excess.setdefault(int(p), [0, 0])
                        cell[0] += max(0, int(missed) - int(ref.get(p, (0, 0))[0]))
                        cell[1] += int(n)
                for key, counts in (("class_outcomes", self.counts),
                                    ("class_outcomes_reference", self.ref_counts)):
                    for p, (missed, n) in info.get(key, {}).items():
                        cell = counts.setdefault(int(p), [0, 0])
                        cell[0] += int(missed)
                        cell[1] += int(n)
            return True

        def _on_rollout_end(self) -> None:
            rates = {p: m / n for p, (m, n) in self.counts.items() if n}
            targets = {p: m / n for p, (m, n) in self.ref_counts.items() if n}
            excess = {p: m / n for p, (m, n) in self.excess.items() if n}
            self.counts, self.ref_counts, self.excess = {}, {}, {}
            if not rates:
                return
            if cfg.miss_reference is None:
                values = mult.update(rates)
            elif cfg.reference_per_episode:
                values = mult.update(excess, {p: 0.1 * budget.of(p) for p in excess})
            else:
                values = mult.update(rates, targets)
            venv.env_method("set_miss_weights", values)
            updates.append({"timesteps": int(self.num_timesteps),
                        "miss_rate": {str(p): r for p, r in sorted(rates.items())},
                        "reference_miss_rate": {str(p): r for p, r in sorted(targets.items())},
                        "excess_miss_rate": {str(p): r for p, r in sorted(excess.items())},
                        "lambda": {str(p): v for p, v in sorted(values.items())}})

    return _Lagrange()


def attach_report(policy_path: str | Path, report: dict[str, Any]) -> None:
    """Store evaluation figures in the report file beside the policy (NAME.eval.json)."""
    p = Path(policy_path).with_suffix("")
    from edgesched_sim.evaluate import dumps_json

    Path(f"{p}.eval.json").write_text(dumps_json(report) + "\n", encoding="utf-8")


def numpy_actions(path: str | Path, observations: np.ndarray) -> np.ndarray:
    """Greedy actions of a policy file on a batch of observations (no masking)."""
    pol = load_learned(path)
    return np.array([int(np.argmax(pol.forward(o))) for o in observations])


__all__ = ["ALGOS", "N_ACTIONS", "OBS_DIM", "TrainConfig", "expand_devices", "export_layers",
           "numpy_actions", "quick_eval", "train"]
