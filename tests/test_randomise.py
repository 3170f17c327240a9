"""Domain randomisation: generated boards are deterministic in their seed, inside the documented
ranges and physically consistent, and run through the engine, the oracle and the policies;
generated workloads are deterministic; held-out boards never reach training."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgesched.device import Opp, parse_profile, profile_to_dict
from edgesched.errors import ProfileError
from edgesched_sim.env import EdgeDVFSEnv
from edgesched_sim.evaluate import evaluate
from edgesched_sim.randomise import (
    HELDOUT_SEEDS,
    RANGES,
    TrainingSampler,
    check_board,
    heldout_boards,
    random_board,
    random_scenario,
    random_workload,
    resolve_devices,
    training_board_seed,
)

SEEDS = range(120)


def test_same_seed_same_board_other_seed_other_board() -> None:
    for seed in (0, 7, 123_456):
        assert random_board(seed) == random_board(seed)
        assert profile_to_dict(random_board(seed)) == profile_to_dict(random_board(seed))
    assert random_board(1) != random_board(2)


def test_boards_respect_ranges_and_consistency_rules() -> None:
    counts: Counter[int] = Counter()
    for seed in SEEDS:
        board = random_board(seed)
        assert check_board(board) == [], seed
        counts[len(board.clusters)] += 1
        for c in board.clusters:
            volts = [o.uv for o in c.opps]
            assert volts == sorted(volts)  # voltage non-decreasing with frequency
        caps = [c.capacity_dmips_mhz for c in board.clusters]
        assert caps == sorted(caps) and caps[-1] == 1024
        per_cycle = [c.dynamic_power_coefficient / c.capacity_dmips_mhz for c in board.clusters]
        assert per_cycle == sorted(per_cycle)  # a bigger core costs more per cycle
    assert set(counts) == {1, 2, 3, 4}
    for n in (1, 2, 3, 4):
        assert len(random_board(5, n_clusters=n).clusters) == n


def test_check_board_catches_broken_boards() -> None:
    board = random_board(3, n_clusters=2)
    little, big = board.clusters
    falling = dataclasses.replace(big, opps=(*big.opps[:-1], Opp(big.opps[-1].khz,
                                                                  big.opps[0].uv - 10_000)))
    assert any("voltage falls" in e
               for e in check_board(dataclasses.replace(board, clusters=(little, falling))))
    cheap = dataclasses.replace(big, dynamic_power_coefficient=little.dynamic_power_coefficient
                                / little.capacity_dmips_mhz * 1024 * 0.5)
    errs = check_board(dataclasses.replace(board, clusters=(little, cheap)))
    assert any("cheaper per cycle" in e for e in errs)
    assert any("outside" in e for e in check_board(dataclasses.replace(board,
                                                                        board_floor_uw=9e6)))


def test_generated_boards_load_like_shipped_profiles() -> None:
    for seed in SEEDS:
        board = random_board(seed, max_clusters=2)
        again = parse_profile(profile_to_dict(board), "generated")
        assert again.clusters == board.clusters


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_policy_and_the_oracle_run_on_generated_boards(n: int) -> None:
    board = random_board(11, n_clusters=n)
    sc = random_scenario(5, board, 15.0)
    specs = ["schedutil", "performance", "powersave", "ondemand", "conservative", "slack",
             "oracle"]
    if n <= 2:  # the observation of version 1 shows at most two clusters
        specs.append("learned:generic")
    doc = evaluate(board, sc, specs, seed=1)
    assert [r["policy"] for r in doc["results"]] == specs
    for r in doc["results"]:
        assert len(r["runs_by_cluster"] or [0] * n) == n
        if r["floor_j"] is not None:  # the floor of the requests the row served in time
            assert r["energy_j"] >= r["floor_j"] * (1 - 1e-9), r["policy"]


def test_workloads_are_deterministic_and_cover_every_process() -> None:
    board = random_board(4)
    processes = set()
    for seed in range(40):
        sc, jobs = random_workload(seed, board, 20.0)
        sc2, jobs2 = random_workload(seed, board, 20.0)
        assert sc == sc2 and jobs.model == jobs2.model
        assert np.array_equal(jobs.release_s, jobs2.release_s)
        assert np.array_equal(jobs.deadline_s, jobs2.deadline_s)
        assert np.array_equal(jobs.priority, jobs2.priority)
        processes.add(sc.process)
        if len(jobs):
            assert jobs.release_s.min() >= 0 and jobs.release_s.max() < 20.0
            assert set(jobs.priority.tolist()) <= {1, 2, 3}
            assert (jobs.deadline_s > jobs.release_s).all()
        weights = [c.weight for c in sc.classes]
        assert 2 <= len(sc.classes) <= 4 and sum(weights) == pytest.approx(1.0)
    assert processes == {"poisson", "mmpp", "trace"}
    a, _ = random_workload(1, board, 20.0)
    b, _ = random_workload(2, board, 20.0)
    assert a != b


def test_heldout_boards_are_twenty_distinct_fixed_seeds() -> None:
    boards = heldout_boards()
    assert len(boards) == len(HELDOUT_SEEDS) == 20
    assert len({b.name for b in boards}) == 20
    assert [b.name for b in boards] == [f"random-{s}" for s in HELDOUT_SEEDS]
    assert resolve_devices("random:900003")[0] == boards[3]
    with pytest.raises(ProfileError, match="random:SEED"):
        resolve_devices("random:x")


class ScriptedRng:
    """An ``integers`` that returns the given values first, then a real generator's."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)
        self.rng = np.random.default_rng(0)

    def integers(self, lo: int, hi: int | None = None, size: object = None) -> int:
        if self.values:
            return self.values.pop(0)
        return int(self.rng.integers(lo, hi))


def test_training_never_draws_a_heldout_board() -> None:
    rng = ScriptedRng([HELDOUT_SEEDS[0], HELDOUT_SEEDS[5], 42])
    assert training_board_seed(rng) == 42
    profile, _ = TrainingSampler(max_clusters=2)(  # type: ignore[arg-type]
        ScriptedRng([HELDOUT_SEEDS[1], 77, 5]))
    assert profile.name == "random-77"
    held = {f"random-{s}" for s in HELDOUT_SEEDS}
    gen = np.random.default_rng(3)
    sampler = TrainingSampler(max_clusters=2, duration_s=5.0)
    for _ in range(200):
        board, sc = sampler(gen)
        assert board.name not in held and len(board.clusters) <= 2
        assert sc.duration_s == 5.0


def test_environment_draws_a_board_per_episode() -> None:
    from gymnasium.utils.env_checker import check_env

    env = EdgeDVFSEnv(sampler=TrainingSampler(max_clusters=2, duration_s=3.0), duration_s=3.0)
    check_env(env, skip_render_check=True)
    names = set()
    for seed in range(5):
        env.reset(seed=seed)
        assert env.engine is not None
        names.add(env.engine.profile.name)
        done = False
        info: dict[str, object] = {}
        while not done:
            _, _, done, _, info = env.step(int(env.action_space.sample()))
        outcomes = info["class_outcomes"]
        assert isinstance(outcomes, dict) and sum(n for _, n in outcomes.values()) == len(
            env.engine.jobs)
    assert len(names) == 5


def test_eval_command_runs_a_generated_board(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from edgesched.cli import main

    out = tmp_path / "r.json"
    rc = main(["eval", "--device", "random:900001", "--scenario", "steady-light", "--policy",
               "schedutil", "--policy", "slack", "--duration-s", "5", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "random-900001" in text and "miss budgets" in text
    assert out.exists()


def test_documented_ranges_cover_every_drawn_quantity() -> None:
    assert {"clusters", "capacity_dmips_mhz", "dpc_per_capacity", "vmin_v", "vmax_v",
            "transition_us", "static_uw_at_1v", "board_floor_uw"} <= set(RANGES)
    doc = __import__("edgesched_sim.randomise", fromlist=["x"]).__doc__
    for source in ("rk3588", "rk3568", "sm8150", "msm8916", "tegra210", "g12b", "h616"):
        assert source in doc


def test_eval_command_runs_the_twenty_heldout_boards(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edgesched.cli import main

    out = tmp_path / "h.json"
    rc = main(["eval", "--device", "heldout", "--scenario", "steady-light", "--policy",
               "schedutil", "--policy", "slack", "--duration-s", "2", "--json", str(out)])
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert rc == 0 and len(doc["runs"]) == 20 and doc["skipped"] == []
    assert [r["device"] for r in doc["runs"]] == [f"random-{s}" for s in HELDOUT_SEEDS]
    assert "over 20 boards:" in text and "slack: inside every miss budget on" in text
