"""Property-based fuzzing, bounded in count (the whole file runs in well under 30 s):

- schemathesis on the OpenAPI description the daemon serves (``GET /v2/openapi.json``), over the
  daemon's 127.0.0.1 TCP listener: no 5xx, and the daemon answers ``/v2/health/live`` after
  every case;
- Hypothesis on the binary tensor framing (``Inference-Header-Content-Length`` with random or
  garbled values, random binary tails) and on the admin endpoints' bodies, over the unix socket;
- Hypothesis on the TOML config loader: any document gives a valid Config or a ConfigError.

``bench/fuzz.py`` runs the same kinds of cases with a larger budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesched.client import Client
from edgesched.errors import ConfigError
from edgesched.server.config import Config, load_config

schemathesis = pytest.importorskip("schemathesis")

NABU = "okay_nabu"
NABU_IN = "serving_default_input_audio:0"
CASES = settings(max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_live(daemon: Daemon) -> None:
    assert daemon.proc.poll() is None, daemon.stderr()
    with Client(daemon.socket, timeout_s=30) as c:
        assert c.live(), "the daemon stopped answering /v2/health/live"


# ------------------------------------------------------------------------------- schemathesis
def test_openapi_no_server_errors(daemon: Daemon) -> None:
    """Every operation of the served description, schemathesis' generated cases (its pytest
    plugin does not run under pytest 9 yet, so its Python API drives Hypothesis here)."""
    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{daemon.port}/v2/openapi.json")
    seen: list[str] = []
    for result in api.get_all_operations():
        op = result.ok()
        seen.append(f"{op.method.upper()} {op.path}")

        @given(op.as_strategy())
        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(case: Any) -> None:
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.method, case.formatted_path,
                                                 response.status_code, response.text[:500])
            if response.status_code >= 400 and response.headers.get(
                    "Content-Type", "").startswith("application/json"):
                assert json.loads(response.text).get("error"), response.text[:500]
            assert_live(daemon)

        one()
    assert "POST /v2/models/{name}/infer" in seen and "POST /v2/admin/policy" in seen


# ------------------------------------------------------------------------------- binary framing
_header_value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30),
    st.sampled_from(["", " 12", "0x10", "1e3", "12\t", "1_0", "-0", "+5"]),
)


@st.composite
def framed_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    size = draw(st.sampled_from([0, 1, 119, 120, 121, 480, 2**31, -1]) | st.integers(-5, 300))
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from([NABU_IN, "x", ""])),
        "shape": draw(st.sampled_from([[1, 3, 40], [120], [1, 3, 40, 1], []])),
        "datatype": draw(st.sampled_from(["INT8", "UINT8", "FP32", "BYTES", None])),
        "parameters": {"binary_data_size": draw(st.one_of(st.just(size), st.none(),
                                                          st.text(max_size=3), st.floats()))},
    }
    doc: dict[str, Any] = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], []]))}
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans()),
                             "priority": draw(st.integers(-2, 5))}
    head = json.dumps(doc, allow_nan=True).encode()
    if draw(st.booleans()):  # garble the header
        cut = draw(st.integers(0, len(head)))
        head = head[:cut] + draw(st.binary(max_size=20)) + head[cut:]
    tail = draw(st.binary(max_size=600))
    body = head + tail
    headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
    how = draw(st.sampled_from(["exact", "off", "garbled", "none"]))
    if how == "exact":
        headers["Inference-Header-Content-Length"] = str(len(head))
    elif how == "off":
        headers["Inference-Header-Content-Length"] = str(len(head) + draw(st.integers(-50, 50)))
    elif how == "garbled":
        headers["Inference-Header-Content-Length"] = draw(_header_value)
    return body, headers


@given(framed_request())
@CASES
def test_binary_framing_never_5xx(daemon: Daemon, req: tuple[bytes, dict[str, str]]) -> None:
    body, headers = req
    with Client(daemon.socket, timeout_s=60) as c:  # one connection per case: no carry-over
        status, msg, data = c.request("POST", f"/v2/models/{NABU}/infer", body, headers)
    assert status < 500, data[:500]
    if status >= 400:
        assert msg.get_content_type() == "application/json"
        assert json.loads(data)["error"]
    assert_live(daemon)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@given(st.one_of(
    st.builds(lambda p: {"policy": p}, st.sampled_from(["schedutil", "learned:../../x",
                                                          "qlearn", "learned:", "sched\x00util",
                                                          ":", "performance:/etc"])
              | st.text(max_size=20)),
    _json))
@CASES
def test_admin_policy_bodies_never_5xx(daemon: Daemon, doc: Any) -> None:
    with Client(daemon.socket, timeout_s=60) as c:
        status, _, data = c.request("POST", "/v2/admin/policy", json.dumps(doc).encode())
        if status == 200:  # put the default back so other tests see the usual daemon
            c.request("POST", "/v2/admin/policy", b'{"policy": "schedutil"}')
    assert status < 500, data[:500]
    answer = json.loads(data)
    if status == 200:
        assert answer["policy"]
    else:
        assert answer["error"]
    assert_live(daemon)


# ------------------------------------------------------------------------------- config loader
SECTIONS = {
    "server": ["socket", "socket_mode", "socket_group", "http_port", "http_host",
               "max_body_bytes", "shutdown_timeout_s", "retry_after_s", "queue_full_status",
               "admin_group", "admin_over_tcp", "switch_interval_us", "idle_timeout_s",
               "dispatcher_nice", "max_connections", "priority_socket", "priority_socket_group"],
    "models": ["dir", "num_threads", "warmup_runs", "measure_runs"],
    "queue": ["levels", "default_priority", "max_count", "max_bytes", "aging_s", "shed_lower"],
    "admission": ["reject_infeasible_deadline", "infeasible_status", "deadline_margin"],
    "board": ["spec", "sysfs_root", "state_dir", "runtime_dir", "virtual_slowdown"],
    "policy": ["spec", "dir"],
    "energy": ["grid_gco2e_per_kwh"],
}


def _toml_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


_scalar = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66).map(str),
    st.integers(min_value=0, max_value=2**20).map(lambda i: f"0o{i:o}"),
    st.sampled_from(["9" * 5000, "0x7fffffffffffffff", "1_000", "+inf", "1979-05-27",
                     "07:32:00", "1979-05-27T07:32:00Z", '"\\u00e9"', "'lit'", '"""x"""']),
    st.floats().map(_toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=12).map(json.dumps),
)
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3).map(
    lambda xs: "[" + ", ".join(xs) + "]"), max_leaves=6)


@st.composite
def toml_document(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 5)) == 0:  # plain junk, sometimes with TOML-ish pieces
        return draw(st.text(max_size=80) | st.sampled_from(
            ["[" * 3000, "a = " + "[" * 3000, "[server]\nsocket = '''", "\ufeff[server]"]))
    lines: list[str] = []
    for name in draw(st.lists(st.sampled_from([*SECTIONS, "extra"]), max_size=4)):
        lines.append(f"[{name}]")
        keys = SECTIONS.get(name, ["k"])
        for key in draw(st.lists(st.sampled_from([*keys, "bogus"]), max_size=4, unique=True)):
            lines.append(f"{key} = {draw(_value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")


@given(toml_document(), st.booleans())
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_config_loader_gives_config_or_config_error(config_dir: Path, text: str,
                                                     latin: bool) -> None:
    path = config_dir / "c.toml"
    path.write_bytes(text.encode("latin-1", errors="replace") if latin else text.encode())
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert isinstance(cfg, Config)
