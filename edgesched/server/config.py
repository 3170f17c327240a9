"""The daemon's configuration: one frozen, typed object loaded from TOML and validated at load.

Every table and key of the file maps to a field below; an unknown table or key is an error that
names it. Command-line flags override the file through :func:`with_overrides`. The shipped
``edgesched/data/config.example.toml`` documents every option.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesched.errors import ConfigError
from edgesched.qos import GuardConfig, MissBudget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edgesched/config.toml")


@dataclass(frozen=True)
class ServerSection:
    socket: str = "/run/edgesched/edgesched.sock"
    socket_mode: int = 0o660
    socket_group: str = ""
    priority_socket: str = "auto"
    priority_socket_group: str = ""
    http_port: int = 0
    http_host: str = "127.0.0.1"
    max_body_bytes: int = 16 << 20
    shutdown_timeout_s: float = 5.0
    retry_after_s: float = 1.0
    queue_full_status: int = 429
    admin_group: str = ""
    admin_over_tcp: bool = False
    switch_interval_us: int = 200
    max_connections: int = 1024
    idle_timeout_s: float = 60.0
    dispatcher_nice: int = -10
    inline_max_us: int = 5000
    """An idle daemon serves a request on the HTTP thread itself when its model's longest
    expected run on the board is at most this (0: always through the dispatcher thread)."""
    shared_memory: bool = False
    """Triton's system shared-memory extension (:mod:`edgesched.server.shm`); off by default."""
    shared_memory_group: str = ""
    """With ``shared_memory`` on: "" lets every unix peer that can connect use it; a group
    name limits it to root and that group's members."""


@dataclass(frozen=True)
class ModelsSection:
    dir: str = ""
    num_threads: int = 1
    warmup_runs: int = 3
    measure_runs: int = 11


@dataclass(frozen=True)
class QueueSection:
    levels: int = 3
    default_priority: int = 2
    max_count: int = 256
    max_bytes: int = 64 << 20
    aging_s: float = 1.0
    shed_lower: bool = True


@dataclass(frozen=True)
class AdmissionSection:
    reject_infeasible_deadline: bool = True
    infeasible_status: int = 400
    deadline_margin: float = 1.0


@dataclass(frozen=True)
class BoardSection:
    spec: str = "virtual:rk3399"
    sysfs_root: str = "/sys"
    state_dir: str = "/var/lib/edgesched"
    runtime_dir: str = "/run/edgesched"
    virtual_slowdown: float = 1.0


@dataclass(frozen=True)
class PolicySection:
    spec: str = "schedutil"
    fallback: str = ""
    """The baseline run when ``spec`` cannot be used; "" (the default): the daemon refuses to
    start instead."""
    dir: str = ""


@dataclass(frozen=True)
class EnergySection:
    grid_gco2e_per_kwh: float = 400.0
    renewable_fraction: float = 0.0


@dataclass(frozen=True)
class SourcePolicySection:
    policy: str = ""
    """The policy spec while on this source ("": ``policy.spec``)."""


@dataclass(frozen=True)
class PowerSourceSection:
    """``[power_source]``: where the power comes from picks the policy
    (:mod:`edgesched.power.supply`)."""

    poll_s: float = 5.0
    sysfs_root: str = ""
    """Where ``class/power_supply`` is read ("": ``board.sysfs_root``)."""
    battery: SourcePolicySection = field(default_factory=SourcePolicySection)
    ac: SourcePolicySection = field(default_factory=SourcePolicySection)


@dataclass(frozen=True)
class QosSection:
    """``[qos]``: per-class miss budgets and the run-time guard (:mod:`edgesched.qos`)."""

    guard: bool = True
    """Raise the decisions of the learned policies and ``slack`` for a class spending its
    budget (the kernel baselines are never changed)."""
    window_requests: int = 200
    window_s: float = 60.0
    hold_s: float = 2.0
    miss_budget: MissBudget = field(default_factory=MissBudget)

    def guard_config(self) -> GuardConfig:
        return GuardConfig(window_requests=self.window_requests, window_s=self.window_s,
                           hold_s=self.hold_s)


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    queue: QueueSection = field(default_factory=QueueSection)
    admission: AdmissionSection = field(default_factory=AdmissionSection)
    board: BoardSection = field(default_factory=BoardSection)
    policy: PolicySection = field(default_factory=PolicySection)
    energy: EnergySection = field(default_factory=EnergySection)
    power_source: PowerSourceSection = field(default_factory=PowerSourceSection)
    qos: QosSection = field(default_factory=QosSection)
    source: str = field(default="<defaults>", compare=False)


PRIORITY_SOCKET_AUTO = "auto"


def priority_socket_path(server: ServerSection) -> Path | None:
    """Where the priority lane listens: ``auto`` puts it next to the main socket, named after
    it (``edgesched.sock`` -> ``edgesched-priority.sock``); ``""`` means no lane."""
    spec = server.priority_socket
    if not spec:
        return None
    if spec != PRIORITY_SOCKET_AUTO:
        return Path(spec)
    main = Path(server.socket)
    return main.with_name(f"{main.stem}-priority{main.suffix or '.sock'}")


def _check_value(src: str, key: str, value: Any, kind: Any) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: {key}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{src}: {key}: number {value} is too large") from None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: {key}: expected an integer, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {key}: expected true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{src}: {key}: expected a string, got {value!r}")
        return value
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):  # [power_source.battery]
        return _section(kind, value, src, key)
    raise AssertionError(f"unsupported config type {kind!r}")  # pragma: no cover


def _section(cls: type, table: Any, src: str, name: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{src}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{src}: unknown key {name}.{key!r} (known keys in [{name}]: "
                              f"{', '.join(sorted(known))})")
        values[key] = _check_value(src, f"{name}.{key}", value, hints[key])
    return cls(**values)


def _validate(cfg: Config) -> Config:
    src = cfg.source
    s, m, q, a = cfg.server, cfg.models, cfg.queue, cfg.admission

    def bad(key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{src}: {key}: expected {expected}, got {value!r}")

    if not s.socket:
        raise bad("server.socket", "a socket path", s.socket)
    lane = priority_socket_path(s)
    if lane is not None and lane == Path(s.socket):
        raise bad("server.priority_socket", "a path other than server.socket", s.priority_socket)
    if not 0 <= s.socket_mode <= 0o777:
        raise bad("server.socket_mode", "a permission mode such as 0o660", s.socket_mode)
    if not 0 <= s.http_port <= 65535:
        raise bad("server.http_port", "0 (off) or a TCP port 1..65535", s.http_port)
    if s.http_host not in ("127.0.0.1", "::1", "localhost"):
        raise bad("server.http_host", "a loopback address (127.0.0.1, ::1 or localhost)",
                  s.http_host)
    if s.max_body_bytes < 1024:
        raise bad("server.max_body_bytes", "at least 1024", s.max_body_bytes)
    if not (s.shutdown_timeout_s >= 0 and math.isfinite(s.shutdown_timeout_s)):
        raise bad("server.shutdown_timeout_s", "a finite number of seconds >= 0",
                  s.shutdown_timeout_s)
    if not s.retry_after_s >= 0:
        raise bad("server.retry_after_s", "seconds >= 0", s.retry_after_s)
    if s.queue_full_status not in (429, 503):
        raise bad("server.queue_full_status", "429 or 503", s.queue_full_status)
    if not (s.idle_timeout_s > 0 and math.isfinite(s.idle_timeout_s)):
        raise bad("server.idle_timeout_s", "a finite number of seconds > 0", s.idle_timeout_s)
    if not (cfg.board.virtual_slowdown >= 1.0 and math.isfinite(cfg.board.virtual_slowdown)):
        raise bad("board.virtual_slowdown", "a finite number >= 1",
                  cfg.board.virtual_slowdown)
    if not -20 <= s.dispatcher_nice <= 19:
        raise bad("server.dispatcher_nice", "a nice value in -20..19", s.dispatcher_nice)
    if s.max_connections < 1:
        raise bad("server.max_connections", "an integer >= 1", s.max_connections)
    if not 50 <= s.switch_interval_us <= 100_000:
        raise bad("server.switch_interval_us", "microseconds in 50..100000",
                  s.switch_interval_us)
    if not 0 <= s.inline_max_us <= 10_000_000:
        raise bad("server.inline_max_us", "microseconds in 0..10000000 (0: off)",
                  s.inline_max_us)
    if m.num_threads < 1:
        raise bad("models.num_threads", "an integer >= 1", m.num_threads)
    if m.warmup_runs < 0:
        raise bad("models.warmup_runs", "an integer >= 0", m.warmup_runs)
    if m.measure_runs < 1:
        raise bad("models.measure_runs", "an integer >= 1", m.measure_runs)
    if not 1 <= q.levels <= 16:
        raise bad("queue.levels", "an integer in 1..16", q.levels)
    if not 1 <= q.default_priority <= q.levels:
        raise bad("queue.default_priority", f"an integer in 1..{q.levels}", q.default_priority)
    if q.max_count < 1:
        raise bad("queue.max_count", "an integer >= 1", q.max_count)
    if q.max_bytes < 1:
        raise bad("queue.max_bytes", "an integer >= 1", q.max_bytes)
    if not q.aging_s > 0:
        raise bad("queue.aging_s", "seconds > 0 (inf disables aging)", q.aging_s)
    if a.infeasible_status not in (400, 429):
        raise bad("admission.infeasible_status", "400 or 429", a.infeasible_status)
    if not (a.deadline_margin > 0 and math.isfinite(a.deadline_margin)):
        raise bad("admission.deadline_margin", "a finite factor > 0", a.deadline_margin)
    if not cfg.board.spec:
        raise bad("board.spec", "virtual:NAME_OR_PATH, sysfs:PROFILE or none", cfg.board.spec)
    if not cfg.policy.spec:
        raise bad("policy.spec", "a policy spec such as schedutil", cfg.policy.spec)
    if not (cfg.energy.grid_gco2e_per_kwh >= 0 and math.isfinite(cfg.energy.grid_gco2e_per_kwh)):
        raise bad("energy.grid_gco2e_per_kwh", "a finite number >= 0",
                  cfg.energy.grid_gco2e_per_kwh)
    if not 0.0 <= cfg.energy.renewable_fraction <= 1.0:
        raise bad("energy.renewable_fraction", "a fraction in [0, 1]",
                  cfg.energy.renewable_fraction)
    if not (cfg.power_source.poll_s > 0 and math.isfinite(cfg.power_source.poll_s)):
        raise bad("power_source.poll_s", "a finite number of seconds > 0",
                  cfg.power_source.poll_s)
    budget = cfg.qos.miss_budget
    for key in ("p1", "p2", "p3"):
        value = getattr(budget, key)
        if not 0.0 <= value < 1.0:
            raise bad(f"qos.miss_budget.{key}", "a fraction in [0, 1) (0.001 = 0.1 %)", value)
    cfg.qos.guard_config().check(f"{src}: qos")
    if cfg.policy.fallback:
        from edgesched.errors import PolicyError
        from edgesched.policy.registry import check_fallback

        try:
            check_fallback(cfg.policy.fallback)
        except PolicyError as exc:
            raise ConfigError(f"{src}: policy.fallback: {exc}") from None
    return cfg


_SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config) if f.name != "source"
}


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    """Validate a decoded TOML document (errors name ``source`` and the key)."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"{source}: unknown table [{name}] (known tables: "
                              f"{', '.join(_SECTIONS)})")
        sections[name] = _section(cls, table, source, name)
    return _validate(Config(**sections, source=source))


def load_config(path: str | Path | None) -> Config:
    """Load ``path``; ``None`` means the default path, which may be missing (defaults apply)."""
    explicit = path is not None
    p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{p}: config file not found") from None
        return _validate(Config())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, bad UTF-8, over-long integers
        raise ConfigError(f"{p}: not valid TOML ({exc or type(exc).__name__})") from None
    return parse_config(data, str(p))


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"section.key": value}`` overrides (None values are skipped)."""
    changed: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        name, _, key = dotted.partition(".")
        section = getattr(cfg, name)
        hints = typing.get_type_hints(type(section))
        if key not in hints:
            raise ConfigError(f"unknown override {dotted!r}")
        changed.setdefault(name, {})[key] = _check_value("command line", dotted, value, hints[key])
    replaced = {name: dataclasses.replace(getattr(cfg, name), **kv) for name, kv in changed.items()}
    return _validate(dataclasses.replace(cfg, **replaced))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (for the status endpoint and logs)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out


__all__ = ["DEFAULT_CONFIG_PATH", "Config", "config_to_dict", "load_config", "parse_config",
           "with_overrides"]
