"""SIGKILL at random moments, then recovery: are the original cpufreq values back every time?

Each run builds a fresh fake cpufreq tree (:mod:`edgesched.power.fakesysfs`, alternately the rk3399
shape with the userspace governor and the clamp-only shape without it), starts the real daemon on
it (``--board sysfs:rk3399``; policy performance or powersave, so requests change frequencies),
lets a client send requests, and kills the daemon with SIGKILL after a random delay in
``[0, --max-delay-s]``: during start-up, while it saves the originals, while it serves. Recovery
then goes one of two ways, picked at random: restart the daemon and stop it with SIGTERM, or run
``edgesched restore``. A run counts as restored when every value a lease saves (governor, limits,
and setspeed under userspace) equals its original on every policy.

Prints one JSON object: ``runs``, ``restored``, ``restore_rate``, ``by_recovery``, ``killed``
(how many were still starting, and how many were serving, when killed), ``crash_loops`` (restarts
that did not reach ready), and the first ``failures`` with what differed.

Usage: python bench/kill_restart.py [--runs 50] [--max-delay-s 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _daemon import stop_daemon

from edgesched.client import Client
from edgesched.power.fakesysfs import leased_values, make_tree
from edgesched.server.runner import shipped_models_dir

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
READY_LIMIT_S = 60.0
CONFIG = "[models]\nwarmup_runs = 0\nmeasure_runs = 1\n"


def _serve_cmd(home: Path, root: Path, models: Path, policy: str) -> list[str]:
    return [sys.executable, "-m", "edgesched", "serve", "--config", str(home / "c.toml"),
            "--socket", str(home / "s.sock"), "--board", "sysfs:rk3399", "--sysfs-root",
            str(root), "--policy", policy, "--models", str(models), "--state-dir",
            str(home / "state"), "--runtime-dir", str(home / "run"), "--log-level", "info"]


def _ready(sock: str) -> bool:
    try:
        with Client(sock, timeout_s=2) as c:
            return c.ready()
    except Exception:
        return False


def _wait_ready(proc: subprocess.Popen[bytes], sock: str, limit_s: float) -> bool:
    until = time.monotonic() + limit_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            return False
        if os.path.exists(sock) and _ready(sock):
            return True
        time.sleep(0.02)
    return False


def _client_loop(sock: str, stop: threading.Event) -> None:
    x = {NABU_IN: np.zeros((1, 3, 40), np.int8)}
    while not stop.is_set():
        try:
            with Client(sock, timeout_s=5) as c:
                while not stop.is_set():
                    c.infer(NABU, x, priority=1)
        except Exception:
            time.sleep(0.01)  # not up yet, or killed


def one_run(i: int, rng: random.Random, work: Path, models: Path,
            max_delay_s: float) -> dict[str, Any]:
    home = work / f"run{i}"
    home.mkdir()
    (home / "c.toml").write_text(CONFIG, encoding="utf-8")
    shape = "rk3399" if i % 2 == 0 else "no-userspace"
    root = make_tree(home / "sys", shape)
    before = leased_values(root)
    policy = rng.choice(["performance", "powersave"])
    sock = str(home / "s.sock")
    stop = threading.Event()
    delay_s = rng.uniform(0.0, max_delay_s)
    with open(home / "first.log", "wb") as log:
        proc = subprocess.Popen(_serve_cmd(home, root, models, policy),
                                stdout=subprocess.DEVNULL, stderr=log)
        client = threading.Thread(target=_client_loop, args=(sock, stop), daemon=True)
        client.start()
        time.sleep(delay_s)
        serving = _ready(sock) if os.path.exists(sock) else False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stop.set()
    client.join(10)
    changed = leased_values(root) != before
    recovery = rng.choice(["restart", "restore"])
    reached_ready = None
    if recovery == "restart":
        with open(home / "second.log", "wb") as log2:
            proc = subprocess.Popen(_serve_cmd(home, root, models, policy),
                                    stdout=subprocess.DEVNULL, stderr=log2)
            reached_ready = _wait_ready(proc, sock, READY_LIMIT_S)
            stop_daemon(proc, 30.0)
    else:
        subprocess.run([sys.executable, "-m", "edgesched", "restore", "--sysfs-root", str(root),
                        "--state-dir", str(home / "state")], capture_output=True, timeout=60,
                       check=False)
    after = leased_values(root)
    doc: dict[str, Any] = {"run": i, "shape": shape, "policy": policy,
                           "kill_after_s": round(delay_s, 3), "serving_when_killed": serving,
                           "changed_when_killed": changed, "recovery": recovery,
                           "reached_ready": reached_ready, "restored": after == before}
    if after != before:
        doc["diff"] = {p: {k: (before[p].get(k), v.get(k)) for k in v if before[p].get(k) !=
                           v.get(k)} for p, v in after.items() if p in before}
    else:
        shutil.rmtree(home, ignore_errors=True)
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--max-delay-s", type=float, default=3.0,
                    help="kill after a uniform random delay up to this (start-up included)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgesched-kill-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        shutil.copy(shipped_models_dir() / f"{NABU}.tflite", models)
        runs = [one_run(i, rng, Path(tmp), models, args.max_delay_s) for i in range(args.runs)]
    restored = sum(r["restored"] for r in runs)
    print(json.dumps({
        "runs": len(runs), "restored": restored,
        "restore_rate": round(restored / len(runs), 4) if runs else None,
        "by_recovery": dict(Counter(r["recovery"] for r in runs)),
        "killed": {"starting": sum(not r["serving_when_killed"] for r in runs),
                   "serving": sum(r["serving_when_killed"] for r in runs),
                   "with_changed_values": sum(r["changed_when_killed"] for r in runs)},
        "crash_loops": sum(1 for r in runs if r["reached_ready"] is False),
        "failures": [r for r in runs if not r["restored"]][:5],
        "max_delay_s": args.max_delay_s, "seed": args.seed,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
