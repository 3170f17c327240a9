"""The daemon's config: one frozen typed object, validated at load, unknown keys named."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import pytest

from edgesched.errors import ConfigError
from edgesched.server.config import (
    Config,
    load_config,
    parse_config,
    priority_socket_path,
    with_overrides,
)


def test_defaults_and_frozen() -> None:
    cfg = Config()
    assert cfg.server.socket == "/run/edgesched/edgesched.sock"
    assert cfg.server.socket_mode == 0o660 and cfg.server.http_port == 0
    assert cfg.board.spec == "virtual:rk3399" and cfg.policy.spec == "schedutil"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.socket = "x"  # type: ignore[misc]


def test_load_and_override(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[server]\nsocket = "/tmp/a.sock"\nsocket_mode = 0o640\n'
                 "[queue]\nmax_count = 4\naging_s = inf\n[energy]\ngrid_gco2e_per_kwh = 50\n")
    cfg = load_config(p)
    assert cfg.server.socket == "/tmp/a.sock" and cfg.server.socket_mode == 0o640
    assert cfg.queue.max_count == 4 and cfg.energy.grid_gco2e_per_kwh == 50.0
    cfg2 = with_overrides(cfg, {"server.socket": "/tmp/b.sock", "server.http_port": None,
                                "policy.spec": "powersave"})
    assert cfg2.server.socket == "/tmp/b.sock" and cfg2.server.socket_mode == 0o640
    assert cfg2.policy.spec == "powersave" and cfg.policy.spec == "schedutil"


@pytest.mark.parametrize(("doc", "needle"), [
    ({"server": {"sokcet": "x"}}, "unknown key server.'sokcet'"),
    ({"nope": {}}, "unknown table [nope]"),
    ({"server": {"http_port": "80"}}, "server.http_port: expected an integer"),
    ({"server": {"http_port": 70000}}, "server.http_port"),
    ({"server": {"http_host": "0.0.0.0"}}, "loopback"),
    ({"queue": {"levels": 3, "default_priority": 4}}, "queue.default_priority"),
    ({"queue": {"shed_lower": 1}}, "expected true or false"),
    ({"server": "x"}, "[server] must be a table"),
    ({"server": {"switch_interval_us": 10}}, "server.switch_interval_us"),
    ({"board": {"virtual_slowdown": 0.5}}, "board.virtual_slowdown"),
    ({"server": {"socket": "/run/a.sock", "priority_socket": "/run/a.sock"}},
     "server.priority_socket: expected a path other than server.socket"),
])
def test_invalid(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "t.toml")
    assert needle in str(err.value) and "t.toml" in str(err.value)


def test_priority_socket_path() -> None:
    def lane(**server: str) -> Path | None:
        return priority_socket_path(parse_config({"server": server}, "t.toml").server)

    assert lane() == Path("/run/edgesched/edgesched-priority.sock")
    assert lane(socket="/tmp/x/api") == Path("/tmp/x/api-priority.sock")
    assert lane(priority_socket="/run/critical.sock") == Path("/run/critical.sock")
    assert lane(priority_socket="") is None


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_shipped_example_is_valid_and_documents_every_option() -> None:
    text = (resources.files("edgesched") / "data" / "config.example.toml").read_text()
    import tomllib

    doc = tomllib.loads(text)
    cfg = parse_config(doc, "config.example.toml")
    assert cfg == Config(source="x")
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f.name in doc[section.name], f"{section.name}.{f.name} not documented"


def test_learned_policy_that_does_not_fit_falls_back(tmp_path: Path, caplog) -> None:
    """A mismatched policy file is refused with a reason and the configured baseline runs."""
    import json
    import logging

    from edgesched.policy.governors import Conservative
    from edgesched.policy.learned import make_random_policy
    from edgesched.policy.registry import open_policy

    manifest = make_random_policy(tmp_path / "p")
    doc = json.loads(manifest.read_text())
    doc["obs_version"] = 0
    manifest.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        policy = open_policy(f"learned:{tmp_path / 'p.npz'}", "conservative")
    assert isinstance(policy, Conservative)
    assert "obs_version" in caplog.text and "falling back to conservative" in caplog.text


def test_the_open_file_limit_is_raised_for_max_connections() -> None:
    import logging
    import resource

    from edgesched.server.gate import FD_RESERVE, ensure_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # as many connections as this machine's hard limit allows, up to the default 1024
    conns = 1024 if hard == resource.RLIM_INFINITY else min(1024, (hard - FD_RESERVE) // 2)
    assert conns >= 1, f"hard open-file limit {hard} leaves no room for connections"
    need = 2 * conns + FD_RESERVE
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_RESERVE, hard))
    try:
        assert ensure_fd_limit(conns, logging.getLogger("t")) == need
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (need, hard)
        assert ensure_fd_limit(16, logging.getLogger("t")) == need, "never lowered"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
