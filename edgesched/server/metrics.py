"""Counters the daemon keeps, rendered in the Prometheus text exposition format (version 0.0.4).

Written by hand (a dozen lines of formatting) so the daemon needs no metrics library.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from edgesched.power.meters import CarbonAccount

DEADLINE_MISS_OUTCOMES = frozenset({"late", "deadline_missed"})


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

    def __init__(self, carbon: CarbonAccount) -> None:
        self.carbon = carbon
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int, str]] = Counter()
        self.deadline_misses: Counter[str] = Counter()
        self.energy_j_total = 0.0
        self.energy_j_by_model: dict[str, float] = {}
        self.received_total = 0
        self.connections_refused: Counter[str] = Counter()
        """By listener: ``main`` (the main socket and TCP) or ``priority`` (the lane)."""

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
            tuple[str, int]], service_s_by_model: Iterable[tuple[str, float]]) -> str:
        """The exposition text; gauges are passed in, read from the dispatcher at scrape time."""
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
        family("edgesched_requests_total", "counter",
               "Inference requests answered, by model, priority and outcome.",
               ((({"model": m, "priority": p, "outcome": o}), n) for (m, p, o), n in requests))
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
        family("edgesched_model_service_seconds", "gauge",
               "Median host service time per model measured at start-up.",
               (({"model": m}, s) for m, s in service_s_by_model))
        return "\n".join(lines) + "\n"
