"""Open the board and the policy named on the command line.

``edgesched.boards`` and ``edgesched.policy.registry`` are imported lazily: the daemon works with
``--board none`` and the two static policies even where those modules are missing.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgesched.board import Board, RunCost
from edgesched.device import DeviceProfile, load_profile
from edgesched.errors import ConfigError, PolicyError
from edgesched.observation import BoardView, Decision
from edgesched.policy.base import Policy

log = logging.getLogger("edgesched.server")

HOST_PROFILE = "rk3399"
"""Profile whose power model prices inferences on ``--board none`` (nothing is changed)."""


class HostBoard:
    """A board that changes nothing: the host runs as it is; energy is priced from the profile.

    Used for ``--board none`` when ``edgesched.boards`` is not installed.
    """

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.view = BoardView.of(profile)
        self._opps = [len(c.opps) - 1 for c in profile.clusters]

    def current_opps(self) -> list[int]:
        return list(self._opps)

    def apply(self, decision: Decision) -> float:
        self._opps[decision.cluster] = decision.opp
        return 0.0

    def cpus_for(self, cluster: int) -> tuple[int, ...]:
        del cluster
        return ()

    def settle(self, decision: Decision, host_s: float, started_s: float) -> RunCost:
        del started_s
        c = self.profile.clusters[decision.cluster]
        return RunCost(wall_s=host_s, energy_j=c.busy_power_uw(decision.opp) * 1e-6 * host_s)

    def close(self) -> None:
        return None


def open_board_spec(spec: str, *, sysfs_root: Path, state_dir: Path, runtime_dir: Path,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Board:
    """``virtual:NAME_OR_PATH`` | ``sysfs:PROFILE`` | ``null:PROFILE`` | ``none``.

    ``none`` (or ``none:PROFILE``) changes nothing and prices inferences with the rk3399 (or the
    named) profile's power model.
    """
    kind = spec.partition(":")[0]
    if kind not in ("virtual", "sysfs", "none", "null"):
        raise ConfigError(f"board spec {spec!r}: expected virtual:NAME_OR_PATH, sysfs:PROFILE, "
                          "null:PROFILE or none")
    try:
        boards = importlib.import_module("edgesched.boards")
    except ModuleNotFoundError as exc:
        if exc.name != "edgesched.boards":
            raise
        if kind not in ("none", "null"):
            raise ConfigError(f"board spec {spec!r} needs edgesched.boards, which is not "
                              "installed; use --board none") from None
        name = spec.partition(":")[2] or HOST_PROFILE
        return HostBoard(load_profile(name))
    if kind == "none" and hasattr(boards, "NullBoard"):
        name = spec.partition(":")[2] or HOST_PROFILE
        board: Board = boards.NullBoard(load_profile(name))
        return board
    return boards.open_board(spec, sysfs_root=sysfs_root,
                             state_dir=state_dir, runtime_dir=runtime_dir, clock=clock,
                             sleep=sleep, log=log)


def make_policy(spec: str, fallback: str = "schedutil") -> Policy:
    """The policy for ``spec``; one that cannot be used is reported and ``fallback`` runs."""
    from edgesched.policy.registry import make_policy as registry_policy

    try:
        return registry_policy(spec)
    except PolicyError as exc:
        log.warning("%s; falling back to %s", exc, fallback)
        return registry_policy(fallback)
