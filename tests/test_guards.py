"""Guards that a small change would silently remove: each test here fails when its guard goes.

- the cpufreq readback check (``_Files.write`` reads every written value back);
- the PELT half-life (32 ms, kernel/sched/pelt.c: ``y^32 = 0.5``);
- the order in which a policy is given back (limits, then governor, then setspeed);
- a learned policy's observation normalisation across a save/load round trip.

The kernel's side lives in :class:`~edgesched.power.fakesysfs.FakeKernel` on a fake tree on disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgesched.observation import N_ACTIONS, OBS_DIM
from edgesched.policy.learned import load_learned, save_learned
from edgesched.power.cpufreq import STATE_FORMAT, Cpufreq, CpufreqVerifyError, recover, state_path
from edgesched.power.fakesysfs import FakeKernel, make_tree, policy_dir, read_attr
from edgesched.utilisation import PeltTracker


# ------------------------------------------------------------------------------ readback
class RivalDaemon:
    """The hardware edge with another frequency daemon on it: the kernel (FakeKernel) takes
    every write, then the rival puts its own speed back into ``scaling_setspeed`` (as a
    userspace daemon such as cpufreqd holding the userspace governor does)."""

    def __init__(self, kernel: FakeKernel, rival_khz: int) -> None:
        self.kernel = kernel
        self.rival_khz = rival_khz

    def read_text(self, path: Path) -> str:
        return self.kernel.read_text(path)

    def write_text(self, path: Path, value: str) -> None:
        self.kernel.write_text(path, value)
        if Path(path).name == "scaling_setspeed":
            self.kernel.write_text(path, str(self.rival_khz))


def test_a_speed_another_daemon_takes_back_is_an_error_not_a_silent_success(
        tmp_path: Path) -> None:
    root = make_tree(tmp_path / "sys", "rk3399")
    kernel = FakeKernel(root)
    with Cpufreq(root, state_dir=tmp_path / "state", mode="userspace",
                 io=RivalDaemon(kernel, 408000)) as cf:
        assert cf.set_khz("policy0", 408000) == 408000  # what the rival holds: no conflict
        with pytest.raises(CpufreqVerifyError, match="reads back '408000'") as err:
            cf.set_khz("policy0", 1416000)
        assert "another program" in str(err.value)
    assert read_attr(root, "policy0", "scaling_cur_freq") == "408000"


# ------------------------------------------------------------------------------ PELT
def test_pelt_halves_in_32_ms() -> None:
    """From 0, 32 ms running at full scale gives 0.5 (the kernel's ``y^32 = 1/2``: 1024 -> 512
    of capacity); 32 ms more gives 0.75; then 32 ms idle halves that to 0.375."""
    t = PeltTracker(now_s=0.0)
    assert t.advance(0.032, 1.0) == pytest.approx(0.5, abs=1e-12)
    assert t.advance(0.064, 1.0) == pytest.approx(0.75, abs=1e-12)
    assert t.advance(0.096, 0.0) == pytest.approx(0.375, abs=1e-12)
    # frequency invariance: half the top frequency counts half (scale 0.5): 0.375 -> 0.4375
    assert t.advance(0.128, 0.5) == pytest.approx(0.375 / 2 + 0.5 * 0.5, abs=1e-12)


def test_pelt_steps_compose() -> None:
    """Two 16 ms steps land where one 32 ms step does (continuous time, no per-call bias)."""
    one, two = PeltTracker(0.0), PeltTracker(0.0)
    one.advance(0.032, 1.0)
    two.advance(0.016, 1.0)
    two.advance(0.032, 1.0)
    assert two.util == pytest.approx(one.util, abs=1e-12) == pytest.approx(0.5, abs=1e-12)
    assert two.util != pytest.approx(1.0 - math.exp(-1.0))  # not a 32 ms time constant


# ------------------------------------------------------------------------------ restore order
class Recorder:
    """FakeKernel, plus the frequency the policy runs at after every write (what a trace of
    ``cpu_frequency`` events would show)."""

    def __init__(self, kernel: FakeKernel, root: Path) -> None:
        self.kernel = kernel
        self.root = root
        self.trace: list[tuple[str, int]] = []

    def read_text(self, path: Path) -> str:
        return self.kernel.read_text(path)

    def write_text(self, path: Path, value: str) -> None:
        self.kernel.write_text(path, value)
        pdir = Path(path).parent
        self.trace.append((Path(path).name, int(read_attr(self.root, pdir.name,
                                                          "scaling_cur_freq"))))


def test_restore_writes_the_limits_before_the_governor(tmp_path: Path) -> None:
    """Writing ``scaling_governor`` starts the governor at once inside the limits in force
    (``store_scaling_governor`` -> ``cpufreq_set_policy`` -> ``cpufreq_start_governor`` ->
    ``governor->limits``; performance's ``cpufreq_gov_performance_limits`` goes to
    ``policy->max``). So the saved limits go back first: the saved governor then starts inside
    them and the CPU never runs above the saved ``scaling_max_freq``. In the other order
    performance would first run at the limit left in place (1.416 GHz here), above the saved
    1.008 GHz, and change frequency twice. (setspeed comes last: the userspace governor clamps it
    to the limits, and the file exists only under that governor.)"""
    root = make_tree(tmp_path / "sys", "rk3399")
    kernel = FakeKernel(root)
    pdir = policy_dir(root, "policy0")
    # what a crashed run left: schedutil at 1.008 GHz with the limits at 1.008-1.416 GHz
    kernel.write_text(pdir / "scaling_governor", "schedutil")
    kernel.write_text(pdir / "scaling_max_freq", "1416000")
    kernel.write_text(pdir / "scaling_min_freq", "1008000")
    assert read_attr(root, "policy0", "scaling_cur_freq") == "1008000"
    kernel.transitions.clear()
    state = tmp_path / "state"
    state.mkdir()
    state_path(state).write_text(json.dumps({
        "format": STATE_FORMAT, "sysfs_root": str(root), "pid": 1,
        "policies": [{"name": "policy0", "governor": "performance", "min_khz": 408000,
                      "max_khz": 1008000, "setspeed_khz": None}]}))
    rec = Recorder(kernel, root)
    recover(root, state, io=rec)
    assert [read_attr(root, "policy0", n) for n in ("scaling_governor", "scaling_min_freq",
                                                    "scaling_max_freq", "scaling_cur_freq")] == [
        "performance", "408000", "1008000", "1008000"]
    assert max(khz for _, khz in rec.trace) == 1008000, rec.trace
    assert kernel.transitions.get("policy0", 0) == 0, rec.trace
    assert [name for name, _ in rec.trace][-1] == "scaling_governor"


# ------------------------------------------------------------------------------ normalisation
def _one_layer(tmp_path: Path, norm: tuple[np.ndarray, np.ndarray] | None) -> Path:
    """A linear policy whose logit 0 is observation 0 (after normalisation) and logit 1 is
    observation 1: the normalisation is read straight off the logits."""
    w = np.zeros((OBS_DIM, N_ACTIONS), np.float32)
    w[0, 0] = 1.0
    w[1, 1] = 1.0
    save_learned(tmp_path / "lin", [(w, np.zeros(N_ACTIONS, np.float32))],
                 {"devices": ["rk3399"], "algo": "test", "seed": 0}, obs_norm=norm)
    return tmp_path / "lin.npz"


def test_a_saved_policy_keeps_its_observation_normalisation(tmp_path: Path) -> None:
    mean = np.zeros(OBS_DIM, np.float32)
    std = np.ones(OBS_DIM, np.float32)
    mean[0], std[0] = 0.25, 0.5
    mean[1], std[1] = -1.0, 0.01
    npz = _one_layer(tmp_path, (mean, std))
    with np.load(npz, allow_pickle=False) as f:  # in the file itself
        np.testing.assert_array_equal(f["obs_mean"], mean)
        np.testing.assert_array_equal(f["obs_std"], std)
    policy = load_learned(npz)
    obs = np.zeros(OBS_DIM, np.float32)
    obs[0], obs[1] = 0.75, 0.0
    logits = policy.forward(obs)
    # by hand: (0.75 - 0.25) / 0.5 = 1.0; (0 - (-1)) / 0.01 = 100, clipped to 10
    assert logits[0] == pytest.approx(1.0, abs=1e-6)
    assert logits[1] == pytest.approx(10.0, abs=1e-6)
    # without normalisation the same file would give the raw observation
    raw = load_learned(_one_layer(tmp_path / "raw", None)).forward(obs)
    assert raw[0] == pytest.approx(0.75) and raw[1] == pytest.approx(0.0)
