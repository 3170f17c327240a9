"""Holds (``edgesched hold``, ``/v2/admin/holds``) and SIGHUP reload, against real daemons on
real unix sockets; the hold table and the reload merge with an injected clock."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import START_LIMIT_S, Daemon, wait_for_status, write_config

from edgesched.commands.hold import parse_duration_s
from edgesched.server.config import Config, parse_config
from edgesched.server.holds import HoldTable, policy_rank
from edgesched.server.reload import merge

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"


def _hold_cli(d: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edgesched", "hold", *args,
                             "--socket", d.socket], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ----------------------------------------------------------------------------- unit
def test_hold_table_strongest_wins_and_expires_by_the_injected_clock() -> None:
    now = [100.0]
    table = HoldTable(lambda: now[0])
    a = table.add("powersave", 0, 10.0, "a")
    b = table.add("schedutil", 816000, 5.0, "b")
    assert table.policy() is b  # schedutil outranks powersave
    c = table.add("performance", 1200000, None, "c")
    assert table.policy() is c and table.floor_khz() == 1200000
    assert table.remove(c.id) is c
    assert table.floor_khz() == 816000
    now[0] = 105.0  # b's time is up
    assert table.policy() is a and table.floor_khz() == 0
    assert table.released == {"expired": 1, "released": 1, "disconnected": 0}
    d = table.add("powersave", 0, 1.0, "d")
    assert table.policy() is d  # same rank: the newest
    now[0] = 200.0
    assert table.active() == [] and table.next_expiry_s() == math.inf
    assert policy_rank("learned:rk3399") == 1 and policy_rank("performance") == 2


def test_durations() -> None:
    assert parse_duration_s("30s") == 30.0
    assert parse_duration_s("10m") == 600.0
    assert parse_duration_s("500ms") == 0.5
    assert parse_duration_s("1.5") == 1.5
    with pytest.raises(Exception, match="not a duration"):
        parse_duration_s("soon")


def test_reload_merge_returns_removed_keys_to_defaults_and_keeps_restart_keys() -> None:
    old = parse_config({"queue": {"max_count": 7}, "server": {"max_connections": 10},
                        "policy": {"spec": "powersave"}}, "old")
    new = parse_config({"server": {"max_connections": 99}}, "new")
    cfg, live, held = merge(old, new)
    assert cfg.queue.max_count == Config().queue.max_count  # removed: the default again
    assert cfg.policy.spec == "schedutil"
    assert cfg.server.max_connections == 10  # needs a restart: the running value stays
    assert live == ["policy.spec", "queue.max_count"] and held == ["server.max_connections"]


# ----------------------------------------------------------------------------- real daemon
def test_cli_hold_shows_in_status_and_goes_when_its_client_dies(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon()
    with _hold_cli(d, "performance", "--for", "10m", "--reason", "benchmark") as cli:
        try:
            doc = wait_for_status(d, "hold granted", lambda s: bool(s["holds"]))
            [hold] = doc["holds"]
            assert hold["policy"] == "performance" and hold["reason"] == "benchmark"
            assert 0 < hold["seconds_left"] <= 600
            doc = wait_for_status(d, "held policy runs", lambda s: s["policy_running"] == "performance")
            assert doc["policy"]["name"] == "performance" and doc["policy_from"] == "hold"
            shown = subprocess.run([sys.executable, "-m", "edgesched", "status", "--socket",
                                    d.socket], capture_output=True, text=True, check=True)
            assert json.loads(shown.stdout)["holds"][0]["reason"] == "benchmark"
        finally:
            cli.kill()  # no goodbye: the daemon sees the connection close
            cli.wait()
    doc = wait_for_status(d, "hold released", lambda s: not s["holds"])
    assert doc["holds_ended"]["disconnected"] == 1
    doc = wait_for_status(d, "policy back", lambda s: s["policy_running"] == "schedutil")
    assert doc["policy"]["name"] == "schedutil" and doc["policy_from"] == "config"

    # Ctrl-C: the CLI releases its hold itself and exits 0
    with _hold_cli(d, "powersave") as cli:
        assert cli.stdout is not None
        line = cli.stdout.readline()  # printed once the daemon granted it
        if "holding powersave until Ctrl-C" not in line:
            cli.kill()
            raise AssertionError(line + cli.communicate()[1])
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=START_LIMIT_S)
        assert cli.returncode == 0, err
        assert "released" in out
    doc = wait_for_status(d, "released by the CLI", lambda s: s["holds_ended"]["released"] == 1)
    assert doc["holds"] == []


def test_floor_hold_raises_every_cluster_and_expires(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(args=("--board", "virtual:rk3399", "--policy", "powersave"))
    with d.client() as c:
        before = c.status()["board"]["clusters"]
        assert all(cl["opp"] == 0 for cl in before)  # powersave: the lowest OPP
        status, _, data = c.request(
            "POST", "/v2/admin/holds",
            json.dumps({"min_khz": 1200000, "seconds": 0.5,
                        "release_on_disconnect": False}).encode())
        assert status == 200, data
        granted = json.loads(data)
        assert granted["min_khz"] == 1200000 and granted["seconds_left"] <= 0.5
        doc = c.status()
        # raised at once, the A53's to its first OPP at or above 1.2 GHz, within its max
        assert [cl["freq_khz"] for cl in doc["board"]["clusters"]] == [1200000, 1200000]
        assert doc["floor_khz"] == 1200000
        c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)})  # decisions stay above it
        assert all(cl["freq_khz"] >= 1200000 for cl in c.status()["board"]["clusters"])
        # bad holds get reasons
        for body, words in (({"seconds": 5}, "needs a policy"),
                            ({"policy": "nosuch", "seconds": 5}, "cannot hold policy"),
                            ({"policy": "performance", "release_on_disconnect": False},
                             "needs \"seconds\""),
                            ({"min_khz": "fast"}, "min_khz must be")):
            status, _, data = c.request("POST", "/v2/admin/holds", json.dumps(body).encode())
            assert status == 400 and words in json.loads(data)["error"], data
        status, _, data = c.request("DELETE", "/v2/admin/holds/999")
        assert status == 404
    # the expiry timer lifts the floor (a status read only drops the hold from the list)
    doc = wait_for_status(d, "floor hold expired",
                 lambda s: s["holds_ended"]["expired"] == 1 and s["floor_khz"] == 0)
    assert doc["holds"] == []


def test_holds_are_admin_calls(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    from test_access import start_as_alice

    d = start_as_alice(start_daemon, tmp_path, "users", {"server": {"admin_group": "ops"}})
    refused = subprocess.run([sys.executable, "-m", "edgesched", "hold", "performance", "--for",
                              "10s", "--socket", d.socket], capture_output=True, text=True,
                             timeout=START_LIMIT_S)
    assert refused.returncode == 1
    assert "refused (403)" in refused.stderr and "'ops'" in refused.stderr, refused.stderr
    with d.client() as c:
        status, _, _ = c.request("DELETE", "/v2/admin/holds/1")
        assert status == 403
        doc = c.status()
    assert doc["holds"] == [] and doc["holds_granted"] == 0


def _reloaded(d: Daemon, tables: dict[str, dict[str, Any]], field: str, count: int,
              ) -> dict[str, Any]:
    write_config(d.home / "config.toml",
                 {"models": {"warmup_runs": 1, "measure_runs": 3}, **tables})
    d.proc.send_signal(signal.SIGHUP)
    return wait_for_status(d, f"reload {field} {count}", lambda s: s["reloads"][field] == count)


def test_sighup_reload_validates_keeps_old_on_error_and_defaults_removed_keys(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(config={"queue": {"max_count": 7}, "policy": {"spec": "powersave"},
                             "energy": {"grid_gco2e_per_kwh": 100.0}})
    doc = wait_for_status(d, "started", lambda s: s["policy_running"] == "powersave")
    assert doc["config"]["queue"]["max_count"] == 7

    # max_count removed, policy and energy changed, a restart key changed
    doc = _reloaded(d, {"policy": {"spec": "performance"},
                        "energy": {"grid_gco2e_per_kwh": 50.0},
                        "server": {"max_connections": 9}}, "ok", 1)
    assert doc["config"]["queue"]["max_count"] == 256  # back to its default
    assert doc["queue"]["max_count"] == 256
    assert doc["config"]["energy"]["grid_gco2e_per_kwh"] == 50.0
    assert doc["config"]["server"]["max_connections"] == 1024  # needs a restart: kept
    assert doc["reloads"]["needs_restart"] == ["server.max_connections"]
    doc = wait_for_status(d, "policy switched", lambda s: s["policy_running"] == "performance")
    assert doc["policy"]["name"] == "performance"
    assert "server.max_connections changed; it needs a restart" in d.stderr()

    # a bad file and a bad policy: the running configuration stays, the log says why
    doc = _reloaded(d, {"queue": {"max_count": "many"}}, "failed", 1)
    assert "queue.max_count: expected an integer" in doc["reloads"]["last_error"]
    doc = _reloaded(d, {"policy": {"spec": "performanse"}}, "failed", 2)
    assert "policy.spec" in doc["reloads"]["last_error"]
    assert doc["config"]["policy"]["spec"] == "performance"
    assert doc["policy_running"] == "performance"
    assert doc["config"]["energy"]["grid_gco2e_per_kwh"] == 50.0
    assert "reload failed, the running configuration stays" in d.stderr()
    with d.client() as c:  # still serving
        assert c.infer(NABU, {NABU_IN: np.zeros((1, 3, 40), np.int8)}).outputs


def _opp_seconds(text: str) -> dict[str, float]:
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln.startswith("edgesched_opp_seconds_total{")}


def test_metrics_count_opp_time_and_deadline_outcomes(
        start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(args=("--board", "virtual:rk3399", "--policy", "performance"))
    x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
    with d.client() as c:
        first = _opp_seconds(c.metrics())
        c.infer(NABU, x, priority=1)
        c.infer(NABU, x, priority=1, timeout_us=60_000_000)
        c.infer(NABU, x, priority=3)
        text = c.metrics()
        clusters = c.status()["board"]["clusters"]
    lines = text.splitlines()
    assert 'edgesched_deadline_outcomes_total{priority="1",outcome="met"} 2' in lines
    assert 'edgesched_deadline_outcomes_total{priority="3",outcome="met"} 1' in lines
    second = _opp_seconds(text)
    # a series per (cluster, frequency) it ran at, the current ones included
    now = {'edgesched_opp_seconds_total{cluster="' + cl["name"] + '",khz="'
           + str(cl["freq_khz"]) + '"}' for cl in clusters}
    assert now <= set(second)
    assert {k.split('"')[1] for k in second} == {cl["name"] for cl in clusters}
    assert all(second[k] >= first.get(k, 0.0) for k in second)
    assert sum(second.values()) > 0


def test_systemd_reload_sends_sighup() -> None:
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "edgesched.service").read_text()
    lines = unit.splitlines()
    i = lines.index("ExecReload=/bin/kill -HUP $MAINPID")
    assert lines[i - 1].startswith("#")
