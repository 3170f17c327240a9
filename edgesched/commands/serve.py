"""``edgesched serve``: run the inference daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgesched.server.config import Config

log = logging.getLogger("edgesched.serve")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the inference daemon in the foreground",
        description="Serve TFLite models over the Open Inference Protocol (KServe v2 REST) on a "
                    "unix socket, queue requests by priority and deadline, and set the CPU "
                    "frequency with a policy. Flags override the config file.")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML config file (default /etc/edgesched/config.toml; a missing "
                        "default file is fine, a missing explicit one is an error)")
    p.add_argument("--socket", help="unix socket path (default /run/edgesched/edgesched.sock)")
    p.add_argument("--http-port", type=int,
                   help="also listen on 127.0.0.1:PORT, 0: off (default: the config's, 0)")
    p.add_argument("--models", help="folder of .tflite models (default: the shipped examples)")
    p.add_argument("--board", help="virtual:NAME_OR_PATH | sysfs:PROFILE | none "
                                    "(default virtual:rk3399)")
    p.add_argument("--policy", help="policy spec: performance, powersave, ondemand, conservative, "
                                     "schedutil, kernel, slack, slack-guarded, learned:NAME (a "
                                     "shipped policy, e.g. learned:rk3399), learned:PATH or "
                                     "qlearn:PATH; one that cannot be used stops the start "
                                     "unless policy.fallback is set (default schedutil)")
    p.add_argument("--sysfs-root", help="root of the sysfs tree, for a sysfs: board only "
                                         "(default /sys)")
    p.add_argument("--state-dir", help="where saved cpufreq settings live "
                                       "(default /var/lib/edgesched)")
    p.add_argument("--runtime-dir", help="runtime files (default /run/edgesched)")
    p.add_argument("--num-threads", type=int,
                   help="interpreter threads per model (default: the config's, 1)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="least level logged")
    # where the start-up check for other frequency daemons looks (tests point them at fakes)
    p.add_argument("--proc-root", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    p.add_argument("--host-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgesched.server.app import serve
    from edgesched.server.config import load_config, with_overrides

    logging.basicConfig(level=args.log_level.upper(),
                        format="edgesched: %(levelname)s %(message)s")
    overrides = {
        "server.socket": args.socket,
        "server.http_port": args.http_port,
        "models.dir": args.models,
        "models.num_threads": args.num_threads,
        "board.spec": args.board,
        "policy.spec": args.policy,
        "board.sysfs_root": args.sysfs_root,
        "board.state_dir": args.state_dir,
        "board.runtime_dir": args.runtime_dir,
    }
    cfg = with_overrides(load_config(args.config), overrides)
    check_sysfs_root(cfg, args.sysfs_root)
    warn_about_frequency_daemons(cfg, args.proc_root, args.host_root)
    # SIGHUP reads the same file again, with the same flags on top
    return serve(cfg, reload=lambda: with_overrides(load_config(args.config), overrides))


def check_sysfs_root(cfg: Config, sysfs_root: str | None) -> None:
    """Refuse ``--sysfs-root`` for a board that never reads it (virtual and none boards)."""
    from edgesched.errors import ConfigError

    if sysfs_root is not None and cfg.board.spec.partition(":")[0] != "sysfs":
        raise ConfigError(f"--sysfs-root applies only to a sysfs: board, and the board is "
                          f"{cfg.board.spec!r}; give --board sysfs:PROFILE or drop --sysfs-root")


def warn_about_frequency_daemons(cfg: Config, proc_root: Path, host_root: Path) -> list[str]:
    """Log a warning for each other program that sets CPU frequencies (only for a ``sysfs:``
    board: the others change nothing real). Runs before the board is opened, so before
    edgesched changes anything; returns the warnings."""
    from edgesched.power.cpufreq import state_path
    from edgesched.power.freqdaemons import detect_frequency_daemons

    if cfg.board.spec.partition(":")[0] != "sysfs":
        return []
    sysfs_root: Path | None = Path(cfg.board.sysfs_root)
    if state_path(Path(cfg.board.state_dir)).exists():
        # a killed run's clamp leaves policies pinned; they are restored when the board opens
        # and must not be reported as someone else's
        sysfs_root = None
    warnings = detect_frequency_daemons(proc_root, root=host_root, sysfs_root=sysfs_root)
    for warning in warnings:
        log.warning("another program sets CPU frequencies: %s", warning)
    return warnings
