"""The agent's event loop switch: asyncio by default, uvloop on request, a precise error else."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from appliance.node.event_loop import ENV, EventLoop, EventLoopError, choose
from tests.node.test_agent import NAMES, Cluster, formed, wait_for, write_config


def test_default_is_the_stock_loop() -> None:
    assert choose(None, {}) is EventLoop.ASYNCIO
    assert choose(None, {ENV: ""}) is EventLoop.ASYNCIO


def test_flag_wins_over_the_environment() -> None:
    assert choose("asyncio", {ENV: "uvloop"}) is EventLoop.ASYNCIO
    assert choose(None, {ENV: "asyncio"}) is EventLoop.ASYNCIO


def test_unknown_loop_names_the_source_and_the_choices() -> None:
    with pytest.raises(
        EventLoopError, match=r"--event-loop='trio': expected one of asyncio, uvloop"
    ):
        choose("trio", {})
    with pytest.raises(EventLoopError, match=rf"{ENV}='tokio': expected one of"):
        choose(None, {ENV: "tokio"})


def test_agent_refuses_an_unknown_loop(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    cmd = [sys.executable, "-m", "appliance", "agent", "--config", str(config), "--node", "n1"]
    p = subprocess.run([*cmd, "--event-loop", "nope"], capture_output=True, timeout=20)
    assert p.returncode == 2
    assert b"--event-loop='nope': expected one of asyncio, uvloop" in p.stderr


def test_three_agents_on_uvloop_form_and_replicate(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    assert choose("uvloop", {}) is EventLoop.UVLOOP
    config, nodes = write_config(tmp_path)
    c = Cluster(tmp_path, config, nodes)
    try:
        for name in NAMES:
            c.start(name, {ENV: "uvloop"})
        primary = wait_for("a formed cluster on uvloop", partial(formed, c), 30)
        backup = next(n for n in c.nodes.values() if n is not primary)
        assert primary.client().set("k", "v") is True
        assert backup.client().get("k") == b"v"
        assert backup.client().incr("n") == 1 and primary.client().incr("n") == 2
    finally:
        c.stop_all()
    assert "Traceback" not in c.logs()
