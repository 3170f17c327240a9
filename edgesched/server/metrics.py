"""Counters the daemon keeps, rendered in the Prometheus text exposition format (version 0.0.4).

Written by hand (a dozen lines of formatting) so the daemon needs no metrics library.

Besides the request, energy and queue families:

``edgesched_opp_seconds_total{cluster,khz}``
    cumulative time each cluster spent at each frequency since the daemon started (the
    frequency the daemon set and read back; time in the dispatcher's clock). Like the kernel's
    ``cpufreq/stats/time_in_state`` (``cpufreq_stats_update`` in
    ``drivers/cpufreq/cpufreq_stats.c`` charges the time since the last change to the old
    frequency at every change and at every read), the open interval is added at scrape time.
``edgesched_deadline_outcomes_total{priority,outcome}``
    per priority class, what became of each request's deadline: ``met`` (answered in time; a
    request without a timeout counts as met), ``late`` (answered after it), ``expired`` (its
    deadline passed while it was queued) and ``shed`` (displaced from a full queue). Rejected
    requests, errors and requests cut off by a shutdown are not counted here.

``edgesched_daemon_cpu_seconds_total``
    the daemon process's CPU time (user and system, every thread) at scrape time: the energy
    the scheduler itself spends, beside the inferences' (each answer's ``daemon_cpu_us`` has
    one request's share).

``docs/grafana/edgesched-dashboard.json`` is a Grafana dashboard over these names.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from edgesched.power.meters import CarbonAccount

DEADLINE_MISS_OUTCOMES = frozenset({"late", "deadline_missed"})
DEADLINE_OUTCOMES = {"ok": "met", "late": "late", "deadline_missed": "expired", "shed": "shed"}
"""A request's outcome -> its deadline outcome in ``edgesched_deadline_outcomes_total``."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, object]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs.items()) + "}"


def _fmt(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics:
    """Thread-safe counters: requests by model/priority/outcome, deadline misses, energy."""

    def __init__(self, carbon: CarbonAccount,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.carbon = carbon
        self.cpu_clock = cpu_clock
        """The process's CPU seconds (``edgesched_daemon_cpu_seconds_total``)."""
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int, str]] = Counter()
        self.deadline_misses: Counter[str] = Counter()
        self.energy_j_total = 0.0
        self.energy_j_by_model: dict[str, float] = {}
        self.received_total = 0
        self.connections_refused: Counter[str] = Counter()
        """By listener: ``main`` (the main socket and TCP) or ``priority`` (the lane)."""
        self.deadline_outcomes: Counter[tuple[int, str]] = Counter()
        """By (priority, met | late | expired | shed)."""
        self.opp_s: dict[tuple[str, int], float] = {}
        """Closed time per (cluster, kHz); the open interval is in ``_opp_since``."""
        self._opp_now: list[tuple[str, int]] = []
        self._opp_since_s = 0.0

    def frequencies(self, now_s: float, freq_khz_by_cluster: Sequence[tuple[str, int]]) -> None:
        """The clusters run at ``freq_khz_by_cluster`` from ``now_s`` on (call at start and
        after every frequency change; an unchanged frequency costs one comparison)."""
        current = list(freq_khz_by_cluster)
        with self._lock:
            if current == self._opp_now:
                return
            self._close_opp_interval(now_s)
            self._opp_now = current

    def _close_opp_interval(self, now_s: float) -> None:
        span_s = max(0.0, now_s - self._opp_since_s)
        for key in self._opp_now:
            self.opp_s[key] = self.opp_s.get(key, 0.0) + span_s
        self._opp_since_s = now_s

    def opp_seconds(self, now_s: float) -> dict[tuple[str, int], float]:
        """Time per (cluster, kHz) up to ``now_s``."""
        with self._lock:
            self._close_opp_interval(now_s)
            return dict(self.opp_s)

    def connection_refused(self, listener: str = "main") -> None:
        with self._lock:
            self.connections_refused[listener] += 1

    def received(self) -> None:
        with self._lock:
            self.received_total += 1

    def count(self, model: str, priority: int, outcome: str, energy_j: float = 0.0) -> None:
        with self._lock:
            self.requests[(model, priority, outcome)] += 1
            if outcome in DEADLINE_MISS_OUTCOMES:
                self.deadline_misses[model] += 1
            kind = DEADLINE_OUTCOMES.get(outcome)
            if kind is not None:
                self.deadline_outcomes[(priority, kind)] += 1
            if energy_j:
                self.energy_j_total += energy_j
                self.energy_j_by_model[model] = self.energy_j_by_model.get(model, 0.0) + energy_j

    @property
    def co2e_g_total(self) -> float:
        return self.carbon.grams_co2e(self.energy_j_total)

    def totals(self) -> dict[str, object]:
        with self._lock:
            by_outcome: Counter[str] = Counter()
            for (_, _, outcome), n in self.requests.items():
                by_outcome[outcome] += n
            return {"received": self.received_total, "by_outcome": dict(by_outcome),
                    "connections_refused": sum(self.connections_refused.values()),
                    "connections_refused_by_listener": dict(self.connections_refused),
                    "deadline_misses": sum(self.deadline_misses.values()),
                    "energy_j": self.energy_j_total, "co2e_g": self.co2e_g_total,
                    "energy_j_by_model": dict(self.energy_j_by_model)}

    def render(self, queue_by_priority: Mapping[int, int], freq_khz_by_cluster: Sequence[
            tuple[str, int]], service_s_by_model: Iterable[tuple[str, float]],
               now_s: float | None = None) -> str:
        """The exposition text; gauges are passed in, read from the dispatcher at scrape time.
        ``now_s`` (the dispatcher's clock) closes the open interval of the OPP time."""
        opp_s = self.opp_seconds(now_s) if now_s is not None else dict(self.opp_s)
        lines: list[str] = []

        def family(name: str, kind: str, doc: str,
                   samples: Iterable[tuple[Mapping[str, object], float]]) -> None:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels(labels)} {_fmt(value)}")

        with self._lock:
            requests = sorted(self.requests.items())
            misses = sorted(self.deadline_misses.items())
            energy = self.energy_j_total
            received = self.received_total
            refused = sorted(self.connections_refused.items()) or [("main", 0)]
            deadlines = sorted(self.deadline_outcomes.items())
        family("edgesched_requests_total", "counter",
               "Inference requests answered, by model, priority and outcome.",
               ((({"model": m, "priority": p, "outcome": o}), n) for (m, p, o), n in requests))
        family("edgesched_deadline_outcomes_total", "counter",
               "Requests by priority class and what became of their deadline: met, late "
               "(answered after it), expired (in the queue) or shed.",
               (({"priority": p, "outcome": o}, n) for (p, o), n in deadlines))
        family("edgesched_opp_seconds_total", "counter",
               "Cumulative time per cluster at each frequency (kHz), in seconds.",
               (({"cluster": c, "khz": khz}, round(s, 6)) for (c, khz), s in sorted(opp_s.items())))
        family("edgesched_requests_received_total", "counter",
               "Inference requests received (before admission).", [({}, received)])
        family("edgesched_connections_refused_total", "counter",
               "Connections answered 503 without being read: server.max_connections were open "
               "on that listener's side (main socket, or the priority lane).",
               (({"listener": name}, n) for name, n in refused))
        family("edgesched_deadline_misses_total", "counter",
               "Requests answered after their deadline or expired in the queue, by model.",
               (({"model": m}, n) for m, n in misses))
        family("edgesched_queue_depth", "gauge", "Requests waiting, by current priority class.",
               (({"priority": p}, n) for p, n in sorted(queue_by_priority.items())))
        family("edgesched_energy_joules_total", "counter",
               "Energy attributed to inferences (modelled or measured), in joules.",
               [({}, energy)])
        family("edgesched_co2e_grams_total", "counter",
               "Grams of CO2-equivalent for that energy at the configured grid intensity and "
               "renewable share.",
               [({}, self.carbon.grams_co2e(energy))])
        family("edgesched_cpu_frequency_khz", "gauge", "Current frequency per cluster, in kHz.",
               (({"cluster": c}, khz) for c, khz in freq_khz_by_cluster))
        family("edgesched_daemon_cpu_seconds_total", "counter",
               "CPU time of the daemon process (user and system, all threads), in seconds.",
               [({}, round(self.cpu_clock(), 6))])
        family("edgesched_model_service_seconds", "gauge",
               "Median host service time per model measured at start-up.",
               (({"model": m}, s) for m, s in service_s_by_model))
        return "\n".join(lines) + "\n"


def render_heat(sample: Mapping[str, Any]) -> str:
    """Exposition lines of a :meth:`edgesched.thermal.HeatMonitor.sample`: the temperature of
    each thermal zone and the time the board spent throttled."""
    lines = ["# HELP edgesched_temperature_celsius Temperature of each thermal zone (sysfs "
             "class/thermal/thermal_zoneN/temp), in degrees Celsius.",
             "# TYPE edgesched_temperature_celsius gauge"]
    for z in sample.get("zones", ()):
        lines.append(f"edgesched_temperature_celsius{_labels({'zone': z['zone'], 'type': z['type']})} "
                     f"{_fmt(z['temp_c'])}")
    lines += ["# HELP edgesched_throttled_seconds_total Time a thermal cap (a cpufreq cooling "
              "device, or the Raspberry Pi firmware) held a cluster below its top frequency.",
              "# TYPE edgesched_throttled_seconds_total counter",
              f"edgesched_throttled_seconds_total {_fmt(round(sample.get('throttled_s', 0.0), 6))}"]
    return "\n".join(lines) + "\n"



def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


class ModelStatistics:
    """Per-model counts and durations for Triton's statistics extension (``GET
    /v2/models[/{name}[/versions/1]]/stats``), since the daemon started or the models were
    last reloaded.

    Every answered infer request counts as ``success`` (it has results) or ``fail`` (shed,
    deadline missed, the run failed, shutting down), with its time in the daemon; ``queue`` is
    its wait in the queue, ``compute_infer`` its run (``service_us``: on a virtual board the
    modelled time at the operating point the policy chose). Inputs and outputs are not prepared
    apart from the run, so ``compute_input`` and ``compute_output`` count the runs with no
    time of their own; there is no response cache and no batching (batch size 1). Requests
    refused at admission (4xx before queueing) reach no model and are not counted."""

    _FIELDS = 9
    """last_ms, success n/ns, fail n/ns, queue n/ns, infer n/ns"""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.wall_clock = wall_clock
        self._lock = threading.Lock()  # answers are recorded on the main loop and the lane's
        self._by_model: dict[str, list[int]] = {}

    def record(self, model: str, ok: bool, daemon_ns: int, queue_ns: int | None,
               infer_ns: int | None) -> None:
        now_ms = int(self.wall_clock() * 1000)
        with self._lock:
            s = self._by_model.get(model)
            if s is None:
                s = self._by_model[model] = [0] * self._FIELDS
            s[0] = now_ms
            if ok:
                s[1] += 1
                s[2] += daemon_ns
            else:
                s[3] += 1
                s[4] += daemon_ns
            if queue_ns is not None:
                s[5] += 1
                s[6] += queue_ns
            if infer_ns is not None:
                s[7] += 1
                s[8] += infer_ns

    def reset(self) -> None:
        """Forget every model's statistics (the models were loaded again)."""
        with self._lock:
            self._by_model.clear()

    def model_stat(self, model: str, version: str = "1") -> dict[str, Any]:
        """One ``$model_stat`` object."""
        with self._lock:
            s = list(self._by_model.get(model, [0] * self._FIELDS))
        runs = s[7]
        io = _duration(runs, 0)
        infer = _duration(runs, s[8])
        return {"name": model, "version": version, "last_inference": s[0],
                "inference_count": s[1], "execution_count": runs,
                "inference_stats": {"success": _duration(s[1], s[2]),
                                    "fail": _duration(s[3], s[4]),
                                    "queue": _duration(s[5], s[6]), "compute_input": io,
                                    "compute_infer": infer, "compute_output": dict(io),
                                    "cache_hit": _duration(0, 0), "cache_miss": _duration(0, 0)},
                "batch_stats": [{"batch_size": 1, "compute_input": dict(io),
                                 "compute_infer": dict(infer), "compute_output": dict(io)}]
                if runs else []}
