"""Reloading the configuration on SIGHUP (``systemctl reload edgesched``).

The file is read and validated whole first (the same loader as at start, with the same
command-line overrides on top), and every policy it names is built; on any error the running
configuration stays and the log says why. A key removed from the file returns to its default,
since the new configuration is the file as it now reads.

Applied live:

- ``policy.*`` (a new ``spec`` is switched to on the dispatcher thread, unless a hold or the
  power source decides: :mod:`edgesched.server.holds`), ``power_source.*``;
- ``queue.max_count``, ``queue.max_bytes``, ``queue.shed_lower``, ``queue.default_priority``;
- ``admission.*``; ``energy.*`` (the carbon account of the metrics from then on);
- ``server.retry_after_s``, ``server.queue_full_status``, ``server.inline_max_us``,
  ``server.switch_interval_us``, ``server.admin_group``, ``server.admin_over_tcp``.

Need a restart (the change is logged with the key, and the running value stays): every other
``server`` key (sockets, their modes and groups, the priority lane, the TCP port, connection and
body limits, timeouts, the dispatcher's nice value), ``models.*`` (``POST
/v2/admin/models/reload`` reloads the models folder), ``board.*``, ``queue.levels`` and
``queue.aging_s`` (queued requests were ordered by them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgesched.errors import EdgeschedError
from edgesched.power.meters import CarbonAccount
from edgesched.server.access import AdminGate
from edgesched.server.config import Config, config_to_dict

if TYPE_CHECKING:
    from edgesched.server.app import ServerState

log = logging.getLogger("edgesched.server")

LIVE_KEYS = frozenset({
    "policy.spec", "policy.fallback", "policy.dir",
    "power_source.poll_s", "power_source.sysfs_root", "power_source.battery.policy",
    "power_source.ac.policy",
    "queue.max_count", "queue.max_bytes", "queue.shed_lower", "queue.default_priority",
    "admission.reject_infeasible_deadline", "admission.infeasible_status",
    "admission.deadline_margin",
    "energy.grid_gco2e_per_kwh", "energy.renewable_fraction",
    "server.retry_after_s", "server.queue_full_status", "server.inline_max_us",
    "server.switch_interval_us", "server.admin_group", "server.admin_over_tcp",
})
"""Dotted keys a reload applies at once; every other key needs a restart."""

ConfigLoader = Callable[[], Config]


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflat(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *path, last = dotted.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def merge(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The configuration to run: ``new``'s live keys, ``old``'s values for keys that need a
    restart. Returns it with the live keys that changed and the restart keys that changed."""
    from edgesched.server.config import parse_config

    before, after = _flat(config_to_dict(old)), _flat(config_to_dict(new))
    changed = sorted(k for k in after if before.get(k) != after[k])
    live = [k for k in changed if k in LIVE_KEYS]
    held = [k for k in changed if k not in LIVE_KEYS]
    merged = {k: (after[k] if k in LIVE_KEYS else before[k]) for k in after}
    cfg = parse_config(_unflat(merged), new.source)
    return cfg, live, held


def _build_policies(cfg: Config) -> None:
    """Build every policy ``cfg`` names (raises EdgeschedError for one that cannot be made)."""
    from edgesched.policy.registry import make_policy

    ps = cfg.power_source
    for key, spec in (("policy.spec", cfg.policy.spec),
                      ("power_source.battery.policy", ps.battery.policy),
                      ("power_source.ac.policy", ps.ac.policy)):
        if spec:
            try:
                make_policy(spec)
            except EdgeschedError as exc:
                raise EdgeschedError(f"{key}: {exc}") from None


@dataclasses.dataclass
class ReloadRecord:
    ok: int = 0
    failed: int = 0
    last_error: str = ""
    last_changed: list[str] = dataclasses.field(default_factory=list)
    needs_restart: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def reload_config(st: ServerState, load: ConfigLoader) -> bool:
    """Read, validate and apply the configuration; False (and the old one kept) on error."""
    async with st.admin_lock:  # one reload (or admin change) at a time
        return await _reload(st, load)


async def _reload(st: ServerState, load: ConfigLoader) -> bool:
    record: ReloadRecord = st.reloads
    loop = asyncio.get_running_loop()

    def read_and_check() -> Config:
        cfg = load()
        _build_policies(cfg)
        return cfg

    try:
        new = await loop.run_in_executor(None, read_and_check)
        cfg, live, held = merge(st.config, new)
    except EdgeschedError as exc:
        record.failed += 1
        record.last_error = str(exc)
        log.error("reload failed, the running configuration stays: %s", exc)
        return False
    for key in held:
        log.warning("reload: %s changed; it needs a restart (systemctl restart edgesched), the "
                    "running value stays until then", key)
    apply_live(st, cfg)
    await st.arbiter.refresh(st)
    record.ok += 1
    record.last_error = ""
    record.last_changed = live
    record.needs_restart = held
    log.warning("configuration reloaded from %s: %s", cfg.source,
                ", ".join(live) if live else "no live key changed")
    return True


def apply_live(st: ServerState, cfg: Config) -> None:
    """Make the running daemon follow ``cfg``'s live keys."""
    disp = st.dispatcher
    q = cfg.queue

    def on_dispatcher() -> None:
        disp.queue.max_count = q.max_count
        disp.queue.max_bytes = q.max_bytes
        disp.queue.shed_lower = q.shed_lower
        disp.queue_full_status = cfg.server.queue_full_status
        disp.retry_after_s = cfg.server.retry_after_s
        disp.inline_max_s = cfg.server.inline_max_us / 1e6
        disp.models_changed()  # forget which models may run inline under the old bound

    with disp._cond:  # the queue's lock: no request is pushed meanwhile
        on_dispatcher()
    st.metrics.carbon = CarbonAccount(cfg.energy.grid_gco2e_per_kwh,
                                      cfg.energy.renewable_fraction)
    sys.setswitchinterval(cfg.server.switch_interval_us / 1e6)
    st.gate = AdminGate(cfg.server.admin_group, cfg.server.admin_over_tcp, st.gate.lookup)
    st.config = cfg


__all__ = ["LIVE_KEYS", "ConfigLoader", "ReloadRecord", "apply_live", "merge", "reload_config"]
