"""The demo end to end, shortened: a real daemon, a mixed workload, a table, a clean SIGTERM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edgesched.commands import demo


def test_demo_runs_two_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    demo.add_parser(parser.add_subparsers())
    out = tmp_path / "demo.json"
    args = parser.parse_args(["demo", "--duration-s", "1.5", "--clients", "3", "--rate-hz", "60",
                              "--board", "none", "--policies", "performance,powersave",
                              "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "policy performance" in text and "policy powersave" in text and "mJ/inf" in text
    results = json.loads(out.read_text())
    for res in results:
        total = res["rows"][-1]
        assert total["sent"] > 0
        assert total["sent"] == (total["ok"] + total["deadline_missed"] + total["shed"]
                                 + total["rejected"])
        assert res["daemon_requests"]["received"] == total["sent"]
