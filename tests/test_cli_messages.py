"""The command line's messages: a bad argument, input file or missing extra gets one clear line
and a non-zero exit status, never a traceback; help texts are plain text with every default."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Daemon, StartDaemon, write_config

from edgesched.cli import build_parser, main

NABU = "okay_nabu"  # one input, INT8 [1, 3, 40]
FACE = "face_detection_short_range"  # one input, FP32 [1, 128, 128, 3]

EVAL = ["eval", "--device", "rk3399", "--scenario", "steady-light", "--policy", "schedutil"]
REST_MARKUP = re.compile(r"`|:[a-z]+:`|::\s*$", re.MULTILINE)
SHOWS_DEFAULT = re.compile(r"\(default\b|\bdefault:")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``edgesched ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------ help texts
def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    root = build_parser()
    found = [("edgesched", root)]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"edgesched {name}", p) for name, p in action.choices.items()]
    return found


def test_help_has_no_rest_markup_and_shows_every_default() -> None:
    parsers = all_parsers()
    assert {"edgesched serve", "edgesched infer", "edgesched eval", "edgesched train"} <= {
        name for name, _ in parsers}
    problems: list[str] = []
    for name, parser in parsers:
        text = parser.format_help()
        for m in REST_MARKUP.finditer(text):
            problems.append(f"{name}: reST markup {m.group(0)!r} in its help")
        if "(default: None)" in text:
            problems.append(f"{name}: shows '(default: None)'")
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (not action.option_strings or action.required or action.help == argparse.SUPPRESS
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            if not SHOWS_DEFAULT.search(shown):
                problems.append(f"{name} {action.option_strings[-1]}: no default shown in "
                                f"{shown!r}")
    assert not problems, "\n".join(problems)


def test_top_level_help_lists_the_commands_in_plain_words() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "edgesched COMMAND --help" in text
    assert ":mod:" not in text and "``" not in text


# ------------------------------------------------------------------------------ eval
@pytest.mark.parametrize(("option", "value", "says"), [
    ("--duration-s", "-5", "--duration-s must be > 0, got -5.0"),
    ("--duration-s", "0", "--duration-s must be > 0"),
    ("--duration-s", "nan", "--duration-s must be > 0"),
    ("--seed", "-1", "--seed must be >= 0, got -1"),
])
def test_eval_refuses_bad_numbers_before_running(capsys: pytest.CaptureFixture[str], option: str,
                                                 value: str, says: str) -> None:
    rc, out, err = run_cli(capsys, *EVAL, option, value)
    assert rc == 2 and out == ""
    assert one_line(err).startswith(f"edgesched eval: error: {says}")


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_eval_checks_output_folders_before_printing_anything(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str) -> None:
    target = tmp_path / "missing" / "out.file"
    rc, out, err = run_cli(capsys, *EVAL, "--duration-s", "5", option, str(target))
    assert rc == 2
    assert out == ""  # no table printed before the refusal
    line = one_line(err)
    assert f"{option} {target}: folder {target.parent} does not exist" in line
    assert f"mkdir -p {target.parent}" in line


def test_eval_plot_without_matplotlib_names_the_extra(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc, out, err = run_cli(capsys, *EVAL, "--duration-s", "5", "--plot", str(tmp_path / "p.png"))
    assert rc == 2 and out == ""
    assert "pip install 'edgesched[plot]'" in one_line(err)
    assert not (tmp_path / "p.png").exists()


def test_demo_checks_its_json_folder_before_starting_a_daemon(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "missing" / "demo.json"
    rc, out, err = run_cli(capsys, "demo", "--board", "none", "--duration-s", "1", "--clients",
                           "1", "--policies", "performance", "--json", str(target))
    assert rc == 2 and out == ""
    assert f"--json {target}: folder {target.parent} does not exist" in one_line(err)


# ------------------------------------------------------------------------------ train
@pytest.mark.parametrize(("option", "value"), [("--timesteps", "0"), ("--timesteps", "-10"),
                                               ("--n-envs", "0")])
def test_train_refuses_non_positive_counts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           option: str, value: str) -> None:
    rc, out, err = run_cli(capsys, "train", "--device", "rk3399", "--no-progress",
                           "--out", str(tmp_path / "p"), option, value)
    assert rc == 2 and out == ""
    assert one_line(err) == f"edgesched train: error: {option} must be > 0, got {value}"
    assert list(tmp_path.iterdir()) == []  # no untrained policy written


def test_train_without_the_extra_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # as if not installed
    rc, _, err = run_cli(capsys, "train", "--device", "rk3399", "--timesteps", "8",
                         "--no-progress", "--out", str(tmp_path / "p"))
    assert rc == 2
    line = one_line(err)
    assert "stable_baselines3 not installed" in line
    assert "pip install 'edgesched[train]'" in line


# ------------------------------------------------------------------------------ --sysfs-root
def test_serve_refuses_sysfs_root_for_a_virtual_board(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", {"models": {"warmup_runs": 1}})
    proc = subprocess.run(
        [sys.executable, "-m", "edgesched", "serve", "--config", str(config),
         "--board", "virtual:rk3399", "--sysfs-root", str(tmp_path),
         "--socket", str(tmp_path / "s.sock"), "--runtime-dir", str(tmp_path / "run"),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert ("--sysfs-root applies only to a sysfs: board, and the board is 'virtual:rk3399'"
            in proc.stderr)
    assert not (tmp_path / "s.sock").exists()


def test_calibrate_refuses_sysfs_root_for_a_virtual_board(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "calibrate", "--models", str(tmp_path), "--board",
                         "virtual:rk3399", "--sysfs-root", str(tmp_path),
                         "--out", str(tmp_path / "x.json"))
    assert rc == 2
    assert "--sysfs-root applies only to a sysfs: board" in one_line(err)


# ------------------------------------------------------------------------------ infer
def infer(capsys: pytest.CaptureFixture[str], daemon: Daemon, model: str, path: Path,
          *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "infer", model, "--input", str(path), "--socket", daemon.socket,
                   *extra)


def test_infer_a_text_file_named_npy_is_called_text(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_text("0 0 0\n0 0 0\n", encoding="utf-8")
    rc, _, err = infer(capsys, daemon, NABU, path)
    assert rc == 2
    line = one_line(err)
    assert f"{path}: a text file, not a NumPy .npy array" in line
    assert "numpy.save" in line and "pickle" not in line


def test_infer_an_array_of_strings_is_refused(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.full((1, 3, 40), "a"))
    rc, _, err = infer(capsys, daemon, NABU, path)
    assert rc == 1
    line = one_line(err)
    assert "holds text (strings) (dtype <U1); the model expects INT8 numbers" in line


@pytest.mark.parametrize(("array", "says"), [
    (np.zeros((1, 40, 3), np.int8),
     "shape [1, 40, 3] does not match the model's [1, 3, 40]"),
    (np.zeros((120,), np.int8), "shape [120] does not match the model's [1, 3, 40]"),
    (np.zeros((1, 3, 40), np.float32), "dtype float32 does not match the model's INT8"),
    (np.full((1, 3, 40), 300, np.int64), "values 300..300 do not fit the model's INT8"),
])
def test_infer_checks_shape_and_dtype_like_admission(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path, array: np.ndarray,
        says: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    rc, out, err = infer(capsys, daemon, NABU, path)
    assert rc == 1 and out == ""
    assert says in one_line(err)


def test_infer_accepts_lossless_conversions(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    ints = tmp_path / "ints.npy"
    np.save(ints, np.ones((1, 3, 40), np.int64))  # in INT8's range
    rc, out, _ = infer(capsys, daemon, NABU, ints)
    assert rc == 0 and json.loads(out)["parameters"]["outcome"] == "ok"
    doubles = tmp_path / "doubles.npy"
    np.save(doubles, np.zeros((1, 128, 128, 3), np.float64))
    rc, out, _ = infer(capsys, daemon, FACE, doubles)
    assert rc == 0 and json.loads(out)["outputs"]["regressors"]["shape"] == [1, 896, 16]


def test_infer_help_documents_the_exit_statuses() -> None:
    text = dict(all_parsers())["edgesched infer"].format_help()
    assert "3 answered, but after the deadline" in " ".join(text.split())


def test_a_late_answer_exits_3(capsys: pytest.CaptureFixture[str], start_daemon: StartDaemon,
                               tmp_path: Path) -> None:
    # no infeasible-deadline refusal, and every model served inline by an idle daemon: a 1 us
    # deadline is then answered with the result, outcome late
    daemon = start_daemon(config={"admission": {"reject_infeasible_deadline": False},
                                  "server": {"inline_max_us": 10_000_000}})
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 3, 40), np.int8))
    outcomes = []
    for _ in range(5):  # a request that reached the queue instead may expire there (504)
        rc, out, err = infer(capsys, daemon, NABU, path, "--timeout-us", "1")
        if not out:
            outcomes.append(json.loads(err)["outcome"])
            assert rc == 1
            continue
        assert json.loads(out)["parameters"]["outcome"] == "late"
        assert rc == 3
        assert "answered after the deadline (outcome late" in one_line(err)
        break
    else:
        pytest.fail(f"no late answer in 5 tries: {outcomes}")
