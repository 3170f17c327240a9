"""One to four clusters (DVFS domains): the rk3588 (three) and rk3566 (one) profiles, evaluation,
EAS placement, the virtual board and fake sysfs tree, a real daemon, calibrate and fit, and the
refusal of the policies whose observation shows two clusters."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Daemon

from edgesched.calibrate import EmulatedClock, ScriptedWorkload, calibrate, open_meter
from edgesched.cli import main
from edgesched.device import (
    MAX_PROFILE_CLUSTERS,
    builtin_profiles,
    load_profile,
    parse_profile,
    profile_to_dict,
)
from edgesched.errors import ProfileError
from edgesched.fit import fit_profile
from edgesched.observation import MAX_CLUSTERS, BoardView, Decision, check_observable
from edgesched.policy.eas import EnergyModel
from edgesched.power.backends import SysfsBoard, VirtualBoard
from edgesched.power.fakesysfs import FakeKernel, make_tree, read_attr

SHIPPED = ("bcm2711", "exynos5422", "rk3399", "rk3566", "rk3588")
BASELINES = ("performance", "powersave", "ondemand", "conservative", "schedutil",
             "performance-big", "powersave-big", "ondemand-big", "conservative-big",
             "schedutil-big", "slack")
NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
LOG = logging.getLogger("test.clusters")


def devicetree(name: str) -> dict[str, Any]:
    ref = resources.files("edgesched") / "data" / "devicetree" / f"{name}.json"
    doc: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return doc


def test_five_profiles_are_shipped_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(SHIPPED) <= set(builtin_profiles())
    assert main(["profiles"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert set(SHIPPED) <= set(listed)


@pytest.mark.parametrize("name", ["rk3588", "rk3566"])
def test_new_profiles_match_their_device_tree_copies(name: str) -> None:
    prof, dt = load_profile(name), devicetree(name)
    assert len(prof.clusters) == len(dt["clusters"])
    for c, d in zip(prof.clusters, dt["clusters"], strict=True):
        assert [(o.khz, o.uv) for o in c.opps] == [(o["hz"] // 1000, o["microvolt"])
                                                   for o in d["opps"]]
        assert c.transition_latency_ns == d["clock_latency_ns"]
        assert c.core == d["core"]
        assert len(c.cpus) == len(d["cpus"])
        if d["dynamic_power_coefficient"] is not None:  # rk356x's device tree has neither
            assert c.dynamic_power_coefficient == d["dynamic_power_coefficient"]
            assert c.capacity_dmips_mhz == d["capacity_dmips_mhz"]
            assert [c.em_power_uw_kernel(i) for i in range(len(c.opps))] == [
                o["em_power_uW_kernel"] for o in d["opps"]]
    # every number the device tree does not give has its source named in the profile
    for key in ("static_power", "board_floor", "memory", "typical_mem_fraction"):
        assert prof.sources.get(key), key
    assert "ff9796ed9e8bf213b3318af8d70acf1e3a01a15d" in dt["source"]


def test_rk3588_has_three_domains_as_its_device_tree() -> None:
    prof = load_profile("rk3588")
    assert [c.cpus for c in prof.clusters] == [(0, 1, 2, 3), (4, 5), (6, 7)]
    assert [c.capacity_dmips_mhz for c in prof.clusters] == [530, 1024, 1024]
    assert [c.dynamic_power_coefficient for c in prof.clusters] == [228, 416, 416]
    assert [(c.min_khz, c.max_khz) for c in prof.clusters] == [
        (1_008_000, 1_800_000), (1_200_000, 2_400_000), (1_200_000, 2_400_000)]


def test_profiles_take_one_to_four_clusters_and_refuse_five() -> None:
    doc = profile_to_dict(load_profile("rk3566"))
    one = doc["clusters"][0]
    doc["clusters"] = [dict(copy.deepcopy(one), cpus=[4 * i + k for k in range(4)], name=f"c{i}")
                       for i in range(MAX_PROFILE_CLUSTERS)]
    assert len(parse_profile(doc, "four").clusters) == 4
    doc["clusters"].append(dict(copy.deepcopy(one), cpus=[16], name="c4"))
    with pytest.raises(ProfileError, match="one to 4 clusters"):
        parse_profile(doc, "five")


@pytest.mark.parametrize("device", ["rk3588", "rk3566"])
def test_every_baseline_slack_and_oracle_run_through_eval(device: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    out = tmp_path / "out.json"
    args = ["eval", "--device", device, "--scenario", "mixed-priority", "--duration-s", "10",
            "--json", str(out)]
    for p in (*BASELINES, "oracle"):
        args += ["--policy", p]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    n = len(load_profile(device).clusters)
    assert doc["clusters"] == [c.name for c in load_profile(device).clusters]
    assert [r["policy"] for r in doc["results"]] == [*BASELINES, "oracle"]
    for r in doc["results"]:
        assert r["energy_j"] > 0 and r["inferences"] > 0
        if r["policy"] != "oracle":
            shares = r["runs_by_cluster"]
            assert len(shares) == n and sum(shares) == pytest.approx(1.0)
    if n == 3:  # something runs on the second A76 domain: the third cluster is used
        assert any(r["runs_by_cluster"][2] > 0 for r in doc["results"] if r["policy"] != "oracle")
    assert "on big1 %" in capsys.readouterr().out or n != 3


def test_eas_on_rk3588_follows_its_energy_model() -> None:
    """The device tree's Energy Model makes the A76 cheaper per unit of work than the A55
    (cost 4442 at 1.2 GHz / 675 mV against 4716 at 1008 MHz / 675 mV: mainline 6.12 has no
    lower OPPs), so find_energy_efficient_cpu puts even a small task on an A76 domain; a heavy
    one, which does not fit the A55s (capacity 397), goes there as well."""
    em = EnergyModel.of(load_profile("rk3588"))
    assert em.capacities == (397, 1024, 1024)
    assert em.domains[1].states[0].cost < em.domains[0].states[0].cost
    assert em.place(0, 50, 50, woken=True, eas=True) == 2  # rd->pd order: big1 is seen first
    for prev in (1, 2):  # a tie between the two A76 domains keeps the previous one
        assert em.place(prev, 50, 50, woken=True, eas=True) == prev
    heavy = 397  # does not fit the A55s with the 20 % margin
    assert em.place(0, 100, heavy, woken=True, eas=True) in (1, 2)
    assert em.place(0, heavy, heavy, woken=False, eas=True) in (1, 2)  # misfit: moves up


def test_eas_on_a_three_domain_board_places_small_on_little_and_heavy_on_big() -> None:
    """The same three domains with an A55 coefficient that makes the little cluster the cheaper
    one (the rk3399 A53's 100): a small task goes to the A55s from any domain, a heavy one to
    an A76 domain, and a task outgrowing the A55s while running moves to an A76 domain."""
    doc = profile_to_dict(load_profile("rk3588"))
    doc["clusters"][0]["dynamic_power_coefficient"] = 100
    em = EnergyModel.of(parse_profile(doc, "rk3588-cheap-little"))
    assert em.domains[0].states[0].cost < em.domains[1].states[0].cost
    for prev in (0, 1, 2):
        assert em.place(prev, 50, 50, woken=True, eas=True) == 0
    heavy = em.capacities[0]
    assert em.place(0, 100, heavy, woken=True, eas=True) in (1, 2)
    assert em.place(0, heavy, heavy, woken=False, eas=True) in (1, 2)
    # without EAS (performance, powersave ...): select_idle_capacity keeps a task where it fits
    assert em.place(0, 50, 50, woken=True, eas=False) == 0
    assert em.place(0, 100, heavy, woken=True, eas=False) == 1  # first fitting in wrap order


def test_virtual_board_and_fake_tree_of_rk3588_have_policy0_4_6(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", "rk3588")
    cpufreq = root / "devices/system/cpu/cpufreq"
    assert sorted(p.name for p in cpufreq.iterdir()) == ["policy0", "policy4", "policy6"]
    assert read_attr(root, "policy4", "related_cpus") == "4 5"
    assert read_attr(root, "policy6", "scaling_available_frequencies").split() == [
        "1200000", "1416000", "1608000", "1800000", "2016000", "2208000", "2400000"]
    board = VirtualBoard(load_profile("rk3588"), runtime_dir=tmp_path / "run")
    try:
        vtree = board.home / "sys/devices/system/cpu/cpufreq"
        assert sorted(p.name for p in vtree.iterdir()) == ["policy0", "policy4", "policy6"]
        assert len(board.current_opps()) == 3
    finally:
        board.close()


def test_sysfs_board_drives_each_of_the_three_policies(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3588")
    board = SysfsBoard(load_profile("rk3588"), sysfs_root=root, state_dir=tmp_path / "state",
                       io=FakeKernel(root))
    try:
        for cluster, policy, opp, khz in ((2, "policy6", 3, "1800000"), (1, "policy4", 0, "1200000"),
                                          (0, "policy0", 4, "1800000")):
            board.apply(Decision(cluster, opp))
            assert read_attr(root, policy, "scaling_cur_freq") == khz
        assert board.current_opps() == [4, 0, 3]
    finally:
        board.close()
    for policy in ("policy0", "policy4", "policy6"):  # every setting given back
        assert read_attr(root, policy, "scaling_governor") == "schedutil"


def test_a_request_is_served_on_virtual_rk3588(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(args=("--board", "virtual:rk3588", "--policy", "powersave-big"))
    with d.client() as c:
        res = c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=1)
        status = c.status()
    p = res.parameters
    assert p["cluster_name"] == "big0" and p["opp"] == 0 and p["freq_khz"] == 1_200_000
    assert status["board"]["spec"] == "virtual:rk3588"
    assert [c["name"] for c in status["board"]["clusters"]] == ["little", "big0", "big1"]
    assert d.terminate() == 0


def test_learned_runs_on_rk3588_in_eval(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The observation (version 2) shows up to four clusters: the shipped learned policy runs
    on the three-domain board and uses more than one of its clusters over a mixed workload."""
    assert MAX_CLUSTERS == 4
    out = tmp_path / "out.json"
    rc = main(["eval", "--device", "rk3588", "--scenario", "mixed-priority", "--duration-s", "10",
               "--policy", "schedutil", "--policy", "learned:generic", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    shares = rows["learned:generic"]["runs_by_cluster"]
    assert len(shares) == 3 and sum(s > 0 for s in shares) >= 2, shares
    for name in SHIPPED:
        check_observable(load_profile(name), "x")


def test_learned_on_rk3588_serves(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(args=("--board", "virtual:rk3588", "--policy", "learned:generic"))
    with d.client() as c:
        res = c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}, priority=2)
        assert res.parameters["cluster_name"] in ("little", "big0", "big1")
        assert c.status()["policy"]["name"] == "learned:generic"
    assert d.terminate() == 0


def test_training_env_takes_a_three_domain_board() -> None:
    from edgesched_sim.env import EdgeDVFSEnv

    env = EdgeDVFSEnv(devices=["rk3588"])
    obs, info = env.reset(seed=3)
    view = BoardView.of(load_profile("rk3588"))
    mask = info["action_mask"]
    assert mask.any() and not (mask & (view.mask == 0)).any(), "safe actions are board actions"
    assert {view.decode(int(a)).cluster for a in np.flatnonzero(view.mask)} == {0, 1, 2}
    assert obs.shape == env.observation_space.shape


def test_calibrate_and_fit_on_virtual_rk3588_give_a_valid_three_cluster_profile(
        tmp_path: Path) -> None:
    truth = load_profile("rk3588")
    board_time, host = EmulatedClock(), EmulatedClock()
    board = VirtualBoard(truth, runtime_dir=tmp_path / "run", clock=board_time.now,
                         sleep=board_time.sleep)
    meter = open_meter("auto", board, sysfs_root=tmp_path, clock=board_time.now, log=LOG)
    workloads = [ScriptedWorkload(n, ms / 1000.0, host)
                 for n, ms in {"small": 4.0, "medium": 20.0}.items()]
    rows = calibrate(board, workloads, runs=2, meter=meter, idle_s=0.5, min_window_s=0.0,
                     clock=board_time.now, sleep=board_time.sleep, host_clock=host.now)
    assert len(rows) == sum(len(c.opps) for c in truth.clusters) * len(workloads)
    assert {r.cluster for r in rows} == {"little", "big0", "big1"}
    result = fit_profile(rows, truth, name="fitted")
    out = tmp_path / "fitted.json"
    out.write_text(json.dumps(result.document()), encoding="utf-8")
    fitted = load_profile(out)
    assert len(fitted.clusters) == 3
    for f, t in zip(fitted.clusters, truth.clusters, strict=True):
        assert f.cpus == t.cpus and [o.khz for o in f.opps] == [o.khz for o in t.opps]
        assert f.dynamic_power_coefficient == pytest.approx(t.dynamic_power_coefficient, rel=0.02)
        assert f.capacity_dmips_mhz == pytest.approx(t.capacity_dmips_mhz, rel=0.01)
    assert result.errors["latency_ms"] < 0.01
    from edgesched_sim.evaluate import evaluate

    doc = evaluate(str(out), "steady-light", ["schedutil", "slack"], seed=0, duration_s=5.0)
    assert doc["clusters"] == ["little", "big0", "big1"]


@pytest.mark.parametrize("device", SHIPPED)
def test_every_shipped_profile_runs_every_non_learned_policy(device: str) -> None:
    from edgesched_sim.evaluate import evaluate

    doc = evaluate(device, "bursty", [*BASELINES, "oracle"], seed=1, duration_s=5.0)
    assert [r["policy"] for r in doc["results"]] == [*BASELINES, "oracle"]
    assert all(r["energy_j"] > 0 for r in doc["results"])


def test_demo_runs_slack_and_a_learned_policy_on_every_board() -> None:
    from edgesched.commands.demo import default_policies

    base = "performance,powersave,schedutil,slack,slack-guarded"
    assert default_policies("virtual:rk3588") == f"{base},learned:generic"
    assert default_policies("virtual:rk3399") == f"{base},learned:rk3399"
