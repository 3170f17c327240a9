"""Open the board named on the command line (imported lazily: the command line stays quick to
start)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgesched.device import load_profile
from edgesched.errors import ConfigError
from edgesched.power.board import Board

log = logging.getLogger("edgesched.power")

HOST_PROFILE = "rk3399"
"""Profile whose power model prices inferences on ``--board none`` (nothing is changed)."""


def open_board_spec(spec: str, *, sysfs_root: Path, state_dir: Path, runtime_dir: Path,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    virtual_slowdown: float = 1.0, hands_off: bool = False) -> Board:
    """``virtual:NAME_OR_PATH`` | ``sysfs:PROFILE`` | ``null:PROFILE`` | ``none``.

    ``none`` (or ``none:PROFILE``) changes nothing and prices inferences with the rk3399 (or the
    named) profile's power model. ``hands_off`` (``--policy kernel``): a ``sysfs:`` board is
    only read and measured, never written (:class:`~edgesched.power.backends.HandsOffBoard`).
    """
    kind = spec.partition(":")[0]
    if kind not in ("virtual", "sysfs", "none", "null"):
        raise ConfigError(f"board spec {spec!r}: expected virtual:NAME_OR_PATH, sysfs:PROFILE, "
                          "null:PROFILE or none")
    from edgesched.power import backends as boards

    if kind == "none":
        return boards.NullBoard(load_profile(spec.partition(":")[2] or HOST_PROFILE))
    return boards.open_board(spec, sysfs_root=sysfs_root,
                             state_dir=state_dir, runtime_dir=runtime_dir, clock=clock,
                             sleep=sleep, log=log, virtual_slowdown=virtual_slowdown,
                             hands_off=hands_off)
