"""Graceful hand-over with three real agents on loopback: ``appliance step-down`` and SIGTERM.

A redis-py client writes continuously through a node that stays a backup; the primary hands
over (by the control channel's command line, or because it gets SIGTERM). Rank 2 must become
primary, nobody may be fenced, no acknowledged write may be lost, and writes must go on. Every
wait polls against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.node.test_agent import (
    NAMES,
    Cluster,
    Node,
    NotifySocket,
    notify_socket,  # noqa: F401 (a fixture)
    wait_for,
    write_config,
)


@dataclass
class Writer:
    """Writes ``w{i} = i`` through one node, in a thread, remembering what was acknowledged."""

    node: Node
    acked: dict[str, bytes] = field(default_factory=dict)
    errors: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        r = self.node.client(timeout=2)
        i = 0
        while not self.done.is_set():
            key, value = f"w{i}", str(i).encode()
            try:
                if r.set(key, value):
                    self.acked[key] = value
                    i += 1
            except (redis.RedisError, OSError):
                self.errors += 1
                r = self.node.client(timeout=2)

    def count(self) -> int:
        return len(self.acked)

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(10)


@dataclass
class Env:
    cluster: Cluster
    runtime: Path
    notify: NotifySocket

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args, "--config", str(self.cluster.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "RUNTIME_DIRECTORY": str(self.runtime)},
        )

    def status(self, name: str) -> dict[str, Any] | None:
        p = self.cli("status", "--json", "--node", name, "--timeout", "2")
        return json.loads(p.stdout) if p.returncode == 0 else None

    def role(self, name: str) -> str | None:
        s = self.status(name)
        return str(s["role"]) if s is not None else None

    def formed(self) -> bool | None:
        s = self.status("n1")
        if s is None or s["role"] != "primary" or len(s["members"]) != 3:
            return None
        return all(self.role(n) == "backup" for n in ("n2", "n3")) or None

    def ranks(self) -> list[str]:
        """The members of n1's view by rank (n1 founds; the others rank as they joined)."""
        s = self.status("n1")
        assert s is not None
        return [m["name"] for m in s["members"]]


@pytest.fixture
def env(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Env]:  # noqa: F811
    config, nodes = write_config(tmp_path)
    c = Cluster(tmp_path, config, nodes)
    with tempfile.TemporaryDirectory(prefix="appl-", dir="/tmp") as runtime:
        e = Env(c, Path(runtime), notify_socket)
        base = {"RUNTIME_DIRECTORY": runtime}
        systemd = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
        try:
            for name in NAMES:
                c.start(name, {**base, **(systemd if name == "n1" else {})})
            wait_for("the group of three", e.formed, 30)
            yield e
        except BaseException:
            print(c.logs(), file=sys.stderr)
            raise
        finally:
            c.stop_all()


def writes_resume(w: Writer, after: int) -> bool | None:
    return w.count() >= after + 20 or None


def check_acknowledged(node: Node, acked: dict[str, bytes]) -> None:
    r = node.client(timeout=5)
    keys = list(acked)
    for i in range(0, len(keys), 40):
        chunk = keys[i : i + 40]
        assert r.mget(chunk) == [acked[k] for k in chunk]


@contextlib.contextmanager
def writing(env: Env) -> Iterator[tuple[Writer, str, str]]:
    """A client writing through rank 3 (a backup throughout); yields it, rank 2 and rank 3."""
    _, second, third = env.ranks()
    w = Writer(env.cluster.nodes[third])
    try:
        w.start()
        wait_for("writes", partial(writes_resume, w, 0), 10)
        yield w, second, third
    finally:
        w.stop()


def test_step_down_by_command_hands_over_to_rank_two_without_a_fence(env: Env) -> None:
    c = env.cluster
    with writing(env) as (w, second, third):
        p = env.cli("step-down", "--node", "n1")
        assert p.returncode == 0, p.stderr
        assert f"handed over to {second}" in p.stdout
        wait_for(f"{second} primary", lambda: env.role(second) == "primary" or None, 10)
        s = env.status("n1")
        assert s is not None and s["role"] == "backup"
        assert [m["name"] for m in s["members"]] == [second, third, "n1"]  # old primary last
        assert s["rank"] == 3
        at = w.count()
        wait_for("writes after the hand-over", partial(writes_resume, w, at), 15)
        # A backup cannot step down, and says so.
        p = env.cli("step-down", "--node", third)
        assert p.returncode == 1 and "not the primary" in p.stderr
        w.stop()
        check_acknowledged(c.nodes[second], w.acked)
        check_acknowledged(c.nodes["n1"], w.acked)
        assert "fencing node" not in c.logs()
        text = env.cli("status", "--node", second).stdout
        assert "role      primary" in text and "LAST HEARD" in text


def test_sigterm_of_the_primary_hands_over_before_it_exits(env: Env) -> None:
    c = env.cluster
    with writing(env) as (w, second, third):
        n1 = c.nodes["n1"].proc
        assert n1 is not None
        n1.send_signal(signal.SIGTERM)
        assert n1.wait(10) == 0
        log = (c.dir / "n1.log").read_text()
        assert "hand-over before exit done" in log
        assert "left the group" in log
        assert "STOPPING=1" in env.notify.messages
        wait_for(f"{second} primary", lambda: env.role(second) == "primary" or None, 10)

        def without_n1() -> bool | None:
            s = env.status(second)
            return (s is not None and [m["name"] for m in s["members"]] == [second, third]) or None

        wait_for("n1 out of the view", without_n1, 10)
        at = w.count()
        wait_for("writes after the hand-over", partial(writes_resume, w, at), 15)
        w.stop()
        check_acknowledged(c.nodes[second], w.acked)
        assert "fencing node" not in c.logs()
        started = time.monotonic()
        assert env.status("n1") is None  # its control socket went away with it
        assert time.monotonic() - started < 10
