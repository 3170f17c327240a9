"""The simulator: gymnasium conformance, determinism, scenarios, and the engine's accounting."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import edgesched_sim
from edgesched.device import load_profile
from edgesched.errors import ConfigError
from edgesched.observation import (
    N_ACTIONS,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    URGENT_WINDOW_S,
    BoardView,
    Decision,
    DecisionContext,
)
from edgesched.policy.base import Performance, PerformanceBig, Powersave
from edgesched_sim.engine import Engine, Outcome
from edgesched_sim.env import EdgeDVFSEnv
from edgesched_sim.scenarios import BUILTIN_NAMES, generate, load_scenario


def test_registered_and_passes_env_checker() -> None:
    env = gym.make(edgesched_sim.ENV_ID, duration_s=5.0)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.action_space.n == N_ACTIONS
    assert env.observation_space.shape == (OBS_DIM,)
    env.close()


def _trajectory(seed: int, steps: int = 300) -> list[tuple[float, ...]]:
    env = EdgeDVFSEnv(devices=["rk3399", "exynos5422"], scenarios=["bursty", "mixed-priority"],
                      duration_s=10.0)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(99)
    out = [tuple(obs.tolist())]
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(int(rng.integers(N_ACTIONS)))
        out.append((*obs.tolist(), r))
        if term or trunc:
            obs, _ = env.reset()
    return out


def test_same_seed_same_trajectory() -> None:
    assert _trajectory(3) == _trajectory(3)
    assert _trajectory(3) != _trajectory(4)


def test_observations_stay_in_bounds_on_every_board() -> None:
    for dev in ("rk3399", "exynos5422", "bcm2711"):
        env = EdgeDVFSEnv(devices=[dev], scenarios=list(BUILTIN_NAMES), duration_s=5.0)
        obs, info = env.reset(seed=1)
        assert info["action_mask"].sum() >= len(load_profile(dev).clusters[0].opps) // 2
        rng = np.random.default_rng(1)
        for _ in range(400):
            assert np.all(obs >= OBS_LOW) and np.all(obs <= OBS_HIGH)
            obs, _, term, _, _ = env.step(int(rng.integers(N_ACTIONS)))
            if term:
                obs, _ = env.reset()


def test_mask_and_decoder() -> None:
    view = BoardView.of(load_profile("bcm2711"))
    # single cluster: the second cluster's actions are all masked, yet decode onto cluster 0
    assert view.mask[20:].sum() == 0
    assert view.decode(39).cluster == 0
    # every OPP the board has is reachable through an unmasked action (20 levels cover 100 MHz)
    reachable = {view.decode(a) for a in np.flatnonzero(view.mask)}
    assert {d.opp for d in reachable} == set(range(10))
    with pytest.raises(ValueError):
        view.decode(N_ACTIONS)


def test_engine_energy_hand_computed() -> None:
    """One request on an idle board: idle power over the horizon plus the busy excess."""
    prof = load_profile("rk3399")
    sc = load_scenario("steady-light")
    jobs = generate(sc, seed=0, duration_s=60.0)
    first = type(jobs)(release_s=jobs.release_s[:1], model=jobs.model[:1],
                       priority=jobs.priority[:1], deadline_s=jobs.deadline_s[:1] + 10.0)
    eng = Engine(prof, first, duration_s=1.0 + float(first.release_s[0]))
    stats = eng.run(PerformanceBig())  # the big cluster's top OPP, as computed below
    from edgesched_sim.workloads import MODELS

    work = MODELS[first.model[0]].work
    big = prof.clusters[1]
    dt_s = prof.latency_ms(work, 1, 7) / 1000.0
    trans_s = big.transition_latency_ns * 1e-9
    horizon = 1.0 + float(first.release_s[0])
    expected = (prof.idle_power_uw * horizon + (big.busy_power_uw(7) - big.idle_uw) * dt_s
                + (big.static_power_uw(7) - big.idle_uw) * trans_s) * 1e-6
    assert stats.total_energy_j == pytest.approx(expected)
    assert stats.energy_j[0] == pytest.approx(big.busy_power_uw(7) * dt_s * 1e-6)
    assert stats.outcome[0] == Outcome.OK


def test_every_request_gets_exactly_one_outcome() -> None:
    prof = load_profile("exynos5422")
    jobs = generate(load_scenario("steady-heavy"), seed=2, duration_s=20.0)
    stats = Engine(prof, jobs, 20.0).run(Powersave())
    assert np.all(stats.outcome != Outcome.PENDING)
    ran = np.isin(stats.outcome, [Outcome.OK, Outcome.LATE])
    assert np.all(np.isfinite(stats.finish_s[ran])) and np.all(np.isnan(stats.finish_s[~ran]))
    # powersave on a heavy load must overflow its deadlines
    assert (stats.outcome == Outcome.EXPIRED).any()


def test_shared_board_tables_give_the_same_run() -> None:
    """Tables built once for every model and reused give the run fresh tables give; tables of
    another board, or missing a model of the job set, are not used."""
    from edgesched_sim.engine import BoardTables
    from edgesched_sim.workloads import model_names

    prof = load_profile("rk3399")
    jobs = generate(load_scenario("mixed-priority"), seed=4, duration_s=20.0)
    shared = BoardTables(prof, model_names())
    fresh = Engine(prof, jobs, 20.0).run(Performance())
    for _ in range(2):
        eng = Engine(prof, jobs, 20.0, tables=shared)
        assert eng.tables is shared
        reused = eng.run(Performance())
        assert reused.total_energy_j == fresh.total_energy_j
        for name in ("outcome", "finish_s", "start_s", "cluster", "opp", "energy_j"):
            np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))
    assert Engine(load_profile("bcm2711"), jobs, 20.0, tables=shared).tables is not shared
    partial = BoardTables(prof, jobs.model[:1])
    if set(jobs.model) - {jobs.model[0]}:
        assert Engine(prof, jobs, 20.0, tables=partial).tables is not partial


def test_context_carries_the_shortest_recent_priority_1_timeout() -> None:
    """``urgent_timeout_s`` against a brute-force scan of the job set (releases up to now)."""
    prof = load_profile("rk3399")
    jobs = generate(load_scenario("mixed-priority"), seed=1, duration_s=30.0)
    seen: list[tuple[float, float]] = []

    class Recording(Performance):
        def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
            seen.append((ctx.now_s, ctx.urgent_timeout_s))
            return super().decide(view, ctx)

    Engine(prof, jobs, 30.0).run(Recording())
    p1 = [(r, d - r) for r, d, p in zip(jobs.release_s, jobs.deadline_s, jobs.priority,
                                         strict=True) if p == 1 and math.isfinite(d)]
    assert len(p1) > 10 and len(seen) > 100
    for now, got in seen:
        want = min((t for r, t in p1 if now - URGENT_WINDOW_S <= r <= now), default=math.inf)
        assert got == pytest.approx(want), now
    assert any(math.isfinite(got) for _, got in seen)


def test_builtin_scenarios_and_generation_is_deterministic() -> None:
    for name in (*BUILTIN_NAMES, "azure-conv"):
        sc = load_scenario(name)
        a = generate(sc, 5, 30.0)
        b = generate(sc, 5, 30.0)
        assert len(a) > 10
        assert np.array_equal(a.release_s, b.release_s) and a.model == b.model
        assert np.all(np.diff(a.release_s) >= 0)
        assert np.all(a.deadline_s > a.release_s)


def test_scenario_file_with_trace(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("t_s,model,priority,deadline_ms\n0.5,okay_nabu,1,20\n"
                                    "1.0,,,\n2.5,mobilenet_v1,3,900\n")
    (tmp_path / "s.toml").write_text(
        'duration_s = 10.0\n[arrivals]\nprocess = "trace"\npath = "t.csv"\n'
        '[[classes]]\nmodel = "face_detection_short_range"\npriority = 2\ndeadline_ms = 100.0\n')
    jobs = generate(load_scenario(str(tmp_path / "s.toml")), seed=0)
    assert jobs.model == ("okay_nabu", "face_detection_short_range", "mobilenet_v1")
    assert jobs.priority.tolist() == [1, 2, 3]
    assert jobs.deadline_s.tolist() == pytest.approx([0.52, 1.1, 3.4])


_CLASSES3 = ('[[classes]]\nmodel = "face_detection_short_range"\npriority = 1\n'
             'deadline_ms = 100.0\n[[classes]]\nmodel = "hand_landmark_lite"\npriority = 2\n'
             'deadline_ms = 250.0\n[[classes]]\nmodel = "mobilenet_v1"\npriority = 3\n'
             'deadline_ms = 2000.0\n')


def test_a_public_trace_as_published(tmp_path: Path) -> None:
    """The Azure LLM trace's own columns (date-times with 7 fractional digits, token counts),
    rows out of order: counted from the earliest request, sorted, sized by the summed tokens."""
    (tmp_path / "azure.csv").write_text(
        "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:47.0000000,2000,10\n"
        "2023-11-16 18:15:46.5000000,100,20\n"
        "2023-11-16 18:15:48.2500001,700,50\n"
        "2023-11-16 18:16:46.5000000,1400,200\n")
    (tmp_path / "s.toml").write_text(
        'duration_s = 30.0\n[arrivals]\nprocess = "trace"\npath = "azure.csv"\n'
        'time_column = "TIMESTAMP"\nsize_columns = ["ContextTokens", "GeneratedTokens"]\n'
        'size_classes = [600, 1500]\n' + _CLASSES3)
    jobs = generate(load_scenario(str(tmp_path / "s.toml")), seed=0)
    assert jobs.release_s.tolist() == pytest.approx([0.0, 0.5, 1.7500001])  # 60 s is past 30 s
    assert jobs.model == ("face_detection_short_range", "mobilenet_v1", "hand_landmark_lite")
    assert jobs.priority.tolist() == [1, 3, 2]


def test_a_json_lines_trace(tmp_path: Path) -> None:
    """The Mooncake traces' form: one JSON object per line, times in ms, token counts."""
    (tmp_path / "mooncake.jsonl").write_text(
        '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [1, 2]}\n'
        '\n'
        '{"timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": []}\n'
        '{"timestamp": 1500, "input_length": 900, "output_length": 20, "hash_ids": [3]}\n')
    (tmp_path / "s.toml").write_text(
        'duration_s = 60.0\n[arrivals]\nprocess = "trace"\npath = "mooncake.jsonl"\n'
        'time_column = "timestamp"\ntime_unit = "ms"\n'
        'size_columns = ["input_length", "output_length"]\nsize_classes = [600, 1500]\n'
        + _CLASSES3)
    jobs = generate(load_scenario(str(tmp_path / "s.toml")), seed=0)
    assert jobs.release_s.tolist() == pytest.approx([0.0, 1.5, 27.482])
    assert jobs.model == ("face_detection_short_range", "hand_landmark_lite", "mobilenet_v1")
    (tmp_path / "bad.jsonl").write_text('{"timestamp": 1}\n[1, 2]\n')
    (tmp_path / "bad.toml").write_text(
        '[arrivals]\nprocess = "trace"\npath = "bad.jsonl"\ntime_column = "timestamp"\n'
        + _CLASSES3)
    with pytest.raises(ConfigError, match="line 2: a JSON object per line, got list"):
        load_scenario(str(tmp_path / "bad.toml"))
    # a bad value is named by its line in the file, blank lines counted
    (tmp_path / "bad.jsonl").write_text('{"timestamp": 1}\n\n\n{"timestamp": "soon"}\n')
    with pytest.raises(ConfigError, match="line 4: timestamp 'soon'"):
        load_scenario(str(tmp_path / "bad.toml"))
    (tmp_path / "t.csv").write_text("t_s\n1\n\n2\nlater\n")
    (tmp_path / "csv.toml").write_text(
        '[arrivals]\nprocess = "trace"\npath = "t.csv"\n' + _CLASSES3)
    with pytest.raises(ConfigError, match="line 5: t_s 'later'"):
        load_scenario(str(tmp_path / "csv.toml"))


@pytest.mark.parametrize(("unit", "start", "times", "want"), [
    ("ms", "first", ["1500", "1000", "4000"], [0.0, 0.5, 3.0]),
    ("ms", "zero", ["1500", "1000", "4000"], [1.0, 1.5, 4.0]),
    ("s", "first", ["1700000000.25", "1700000001", "1700000000"], [0.0, 0.25, 1.0]),
    ("us", "zero", ["250000", "0", "2e6"], [0.0, 0.25, 2.0]),
])
def test_trace_times_in_units_and_from_the_first_request(tmp_path: Path, unit: str, start: str,
                                                          times: list[str],
                                                          want: list[float]) -> None:
    (tmp_path / "t.csv").write_text("Timestamp,x\n" + "".join(f"{t},1\n" for t in times))
    (tmp_path / "s.toml").write_text(
        f'duration_s = 10.0\n[arrivals]\nprocess = "trace"\npath = "t.csv"\n'
        f'time_column = "Timestamp"\ntime_unit = "{unit}"\nstart = "{start}"\n' + _CLASSES3)
    jobs = generate(load_scenario(str(tmp_path / "s.toml")), seed=0)
    assert jobs.release_s.tolist() == pytest.approx(want)


def test_a_trace_of_end_times_and_durations(tmp_path: Path) -> None:
    """Azure Functions 2021's form: each invocation's end time and duration, in seconds."""
    (tmp_path / "t.csv").write_text("app,func,end_timestamp,duration\n"
                                    "a,f,10.5,0.5\na,g,3.25,2.0\na,f,12.0,0.012\n")
    (tmp_path / "s.toml").write_text(
        'duration_s = 30.0\n[arrivals]\nprocess = "trace"\npath = "t.csv"\n'
        'time_column = "end_timestamp"\nminus_column = "duration"\nstart = "first"\n'
        + _CLASSES3)
    jobs = generate(load_scenario(str(tmp_path / "s.toml")), seed=0)
    assert jobs.release_s.tolist() == pytest.approx([0.0, 8.75, 10.738])
    (tmp_path / "t.csv").write_text("app,func,end_timestamp,duration\na,f,10.5,\n")
    with pytest.raises(ConfigError, match=r"line 2: .*not a finite time \(less duration ''\)"):
        load_scenario(str(tmp_path / "s.toml"))


def test_a_trace_that_starts_after_the_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("t_s\n1700000000\n1700000001\n")
    (tmp_path / "s.toml").write_text(
        'duration_s = 10.0\n[arrivals]\nprocess = "trace"\npath = "t.csv"\n' + _CLASSES3)
    sc = load_scenario(str(tmp_path / "s.toml"))
    with pytest.raises(ConfigError, match=r"first request comes at 1\.7e\+09 s, after the 10 s "
                                          r'run; .*start = "first"'):
        generate(sc, seed=0)


@pytest.mark.parametrize(("csv_text", "arrivals", "match"), [
    ("TIMESTAMP,n\n1,2\n", "", r"no 't_s' column \(its columns: TIMESTAMP, n\).*time_column"),
    ("t_s\n1\nyesterday\n", "", r"line 3: t_s 'yesterday' is neither a number nor a date-time"),
    ("t_s\nnan\n", "", "line 2: .*not a finite time"),
    ("t_s,tokens\n1,5\n", "size_classes = [10]\n", "needs the size column.*size_columns"),
    ("t_s\n1\n", 'time_unit = "min"\n', "time_unit must be one of s, ms, us, ns"),
    ("t_s\n1\n", 'start = "last"\n', 'start must be "zero"'),
    ("t_s\n1\n", "size_columns = 3\n", "size_columns must be a list"),
    ("t_s\n1\n", 'minus_column = "duration"\n', "minus_column must name a column"),
])
def test_bad_traces_say_what_to_change(tmp_path: Path, csv_text: str, arrivals: str,
                                       match: str) -> None:
    (tmp_path / "t.csv").write_text(csv_text)
    (tmp_path / "s.toml").write_text(
        '[arrivals]\nprocess = "trace"\npath = "t.csv"\n' + arrivals + _CLASSES3)
    with pytest.raises(ConfigError, match=match):
        load_scenario(str(tmp_path / "s.toml"))


_AZURE_FUNCTIONS = ("HashOwner,HashApp,HashFunction,Trigger,1,2,3,4\n"
                    "o1,a1,f1,http,3,0,2,1\n"
                    "o1,a1,f2,timer,1,1,1,1\n"
                    "o2,a2,f3,http,0,5,0,0\n")


def _count_scenario(tmp_path: Path, arrivals: str, duration_s: float = 240.0) -> Path:
    (tmp_path / "inv.csv").write_text(_AZURE_FUNCTIONS)
    (tmp_path / "s.toml").write_text(
        f'duration_s = {duration_s}\n[arrivals]\nprocess = "trace"\npath = "inv.csv"\n'
        + arrivals + _CLASSES3)
    return tmp_path / "s.toml"


def test_a_count_trace_as_published(tmp_path: Path) -> None:
    """Azure Functions 2019's form: a row per function, a column per minute holding its
    invocations; the rows are summed, each minute's requests arrive within that minute."""
    sc = load_scenario(str(_count_scenario(tmp_path, 'count_columns = "numbered"\n')))
    assert sc.trace_counts == (4, 6, 3, 2)
    jobs = generate(sc, seed=1)
    minute = np.floor(jobs.release_s / 60.0).astype(int)
    assert np.bincount(minute, minlength=4).tolist() == [4, 6, 3, 2]
    assert np.all(np.diff(jobs.release_s) >= 0)
    again, other = generate(sc, seed=1), generate(sc, seed=2)
    assert again.release_s.tolist() == jobs.release_s.tolist()
    assert other.release_s.tolist() != jobs.release_s.tolist()
    # a shorter run keeps the bins it covers, and only the part of a bin inside it
    short = generate(sc, seed=1, duration_s=90.0)
    assert len(short) <= 10 and np.all(short.release_s < 90.0)
    assert (short.release_s < 60.0).sum() == 4
    # rows picked by their columns, bins of another length, columns named in order
    sc = load_scenario(str(_count_scenario(
        tmp_path, 'count_columns = ["3", "1"]\nbin_s = 2.0\nwhere = {Trigger = "http"}\n')))
    assert sc.trace_counts == (2, 3)
    jobs = generate(sc, seed=0)
    assert np.histogram(jobs.release_s, bins=[0.0, 2.0, 4.0])[0].tolist() == [2, 3]
    # thinned: about the share asked for
    sc = load_scenario(str(_count_scenario(tmp_path, 'count_columns = "numbered"\nthin = 0.5\n'
                                           'time_scale = 0.001\n')))
    kept = [len(generate(sc, seed=k)) for k in range(200)]
    assert 0.4 < float(np.mean(kept)) / 15 < 0.6


@pytest.mark.parametrize(("arrivals", "match"), [
    ('count_columns = "numbered"\ntime_column = "t"\n', "time_column is for a trace of arrival"),
    ('bin_s = 60.0\ntime_column = "HashOwner"\n', "bin_s is for a count trace"),
    ('count_columns = "all"\n', 'count_columns must be "numbered" or a list'),
    ('count_columns = ["9"]\n', r"no column\(s\) 9 of arrivals.count_columns"),
    ('count_columns = "numbered"\nwhere = {Trigger = "queue"}\n', "no row .* matches"),
    ('count_columns = "numbered"\nwhere = {Region = "eu"}\n', r"no column\(s\) Region"),
    ('count_columns = ["HashApp"]\n', "line 2: column 'HashApp' holds 'a1', not a count"),
    ('count_columns = "numbered"\nthin = 2.0\n', r"thin is the share .* in \(0, 1\]"),
    ('count_columns = "numbered"\nbin_s = 0\n', "'bin_s' must be > 0"),
])
def test_bad_count_traces_say_what_to_change(tmp_path: Path, arrivals: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_scenario(str(_count_scenario(tmp_path, arrivals)))


def test_a_count_trace_that_starts_after_the_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "inv.csv").write_text("HashFunction,1,2,3\nf,0,0,7\n")
    (tmp_path / "s.toml").write_text(
        'duration_s = 60.0\n[arrivals]\nprocess = "trace"\npath = "inv.csv"\n'
        'count_columns = "numbered"\n' + _CLASSES3)
    with pytest.raises(ConfigError, match="first request comes in the bin at 120 s, after the "
                                          "60 s run"):
        generate(load_scenario(str(tmp_path / "s.toml")), seed=0)


@pytest.mark.parametrize(("text", "match"), [
    ('[arrivals]\nprocess = "poisson"\nrate_hz = 1\nbogus = 1\n', "classes"),
    ('speed = 1\n[arrivals]\nprocess = "poisson"\nrate_hz = 1\n', "unknown key 'speed'"),
    ('[arrivals]\nprocess = "uniform"\n[[classes]]\nmodel = "okay_nabu"\ndeadline_ms = 5\n',
     "poisson, mmpp or trace"),
    ('[arrivals]\nprocess = "poisson"\nrate_hz = 1\n[[classes]]\nmodel = "resnet"\n'
     'deadline_ms = 5\n', "unknown model 'resnet'"),
])
def test_bad_scenario_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_scenario(str(p))


def test_reward_penalises_misses_by_priority() -> None:
    env = EdgeDVFSEnv(devices=["rk3399"], scenarios=["mixed-priority"], duration_s=10.0)

    def episode(action: int) -> float:
        env.reset(seed=0)
        total, done = 0.0, False
        while not done:
            _, r, done, _, _ = env.step(action)
            total += r
        return total

    slow, fast = episode(0), episode(N_ACTIONS - 1)
    assert math.isfinite(slow) and math.isfinite(fast)
    assert fast > slow  # the lowest little-core OPP misses the 20 ms keyword deadlines
