"""sysfs faults at random points of the power path, on fake cpufreq trees on disk.

Hypothesis draws a tree (rk3399 with and without the userspace governor, a Raspberry Pi 4 without
``scaling_available_frequencies``) and a sequence of steps: frequency changes, faults on reads or
writes of any cpufreq file (EPERM, EACCES, EBUSY, EINVAL, EIO; once, a few times or for good),
faults cleared, a policy directory vanishing. Whatever happens, the board never raises into the
inference path and an inference can still be accounted; closing never raises; and once the
faults are gone, every original value of every policy still present is back, either from the
close itself or from the state file it kept (``recover``, as at the next start).
"""

from __future__ import annotations

import errno
import logging
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesched.device import load_profile
from edgesched.observation import Decision
from edgesched.power.backends import SysfsBoard
from edgesched.power.cpufreq import recover, state_path
from edgesched.power.fakesysfs import FakeKernel, FaultInjector, leased_values, make_tree, unplug

SHAPES = {"rk3399": "rk3399", "no-userspace": "rk3399", "rpi4": "bcm2711"}
FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed",
         "scaling_cur_freq", "scaling_available_governors", "cpuinfo_max_freq")
ERRNOS = (errno.EPERM, errno.EACCES, errno.EBUSY, errno.EINVAL, errno.EIO)

apply_step = st.tuples(st.just("apply"), st.integers(0, 1), st.floats(0.0, 1.0))
fault_step = st.tuples(st.just("fault"), st.integers(0, 1), st.sampled_from(FILES),
                       st.sampled_from(ERRNOS), st.sampled_from(("write", "read")),
                       st.one_of(st.none(), st.integers(1, 3)))
steps = st.lists(st.one_of(apply_step, apply_step, fault_step, st.just(("clear",)),
                           st.tuples(st.just("unplug"), st.integers(0, 1))), max_size=25)


def _run(shape: str, plan: list[tuple[Any, ...]], home: Path) -> None:
    root = make_tree(home / "sys", shape)
    profile = load_profile(SHAPES[shape])
    state_dir = home / "state"
    before = leased_values(root)
    io = FaultInjector(FakeKernel(root))
    board = SysfsBoard(profile, sysfs_root=root, state_dir=state_dir, io=io,
                       log=logging.getLogger("test.faults"))
    names = sorted(before)
    gone: set[str] = set()
    for step in plan:
        kind = step[0]
        if kind == "apply":
            ci = step[1] % len(profile.clusters)
            opp = round(step[2] * (len(profile.clusters[ci].opps) - 1))
            board.apply(Decision(ci, opp))  # must not raise, whatever failed
            assert board.settle(Decision(ci, opp), 0.005, 0.0).energy_j > 0
            board.current_opps()
        elif kind == "fault":
            _, pi, name, code, on, times = step
            io.fail(f"{names[pi % len(names)]}/{name}", code, on=on, times=times)
        elif kind == "clear":
            io.clear()
        else:
            name = names[step[1] % len(names)]
            if name not in gone:
                unplug(root, name)
                gone.add(name)
    board.close()  # must not raise either: what it cannot restore stays in the state file
    io.clear()
    recover(root, state_dir, io=io)  # the next start does this first
    after = leased_values(root)
    assert sorted(after) == sorted(set(before) - gone)
    for name, values in after.items():
        assert values == before[name], (name, plan)
    assert not state_path(state_dir).exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(SHAPES)), plan=steps)
def test_faults_at_random_points_never_leave_a_changed_value(shape: str,
                                                             plan: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="edgesched-faults-") as tmp:
        _run(shape, plan, Path(tmp))
