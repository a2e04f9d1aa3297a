"""The netns lab (root): real network faults between nodes in their own namespaces.

Pulling the primary's network cable and partitioning it away each end with one primary on the
connected side, the old primary fenced (the power strip sits outside the cluster network, as a
fence device should) and back as a backup once the network heals; 20% packet loss on every
link slows writes but loses none; ``down`` leaves no namespace, link or rule behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from appliance.lab.netns import LabNetwork, available
from tests.lab.test_lab_processes import lab, status
from tests.node.test_agent import wait_for

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "lab"
    try:
        yield d
    finally:
        lab(d, "down", check=False)


class Writer(threading.Thread):
    """SET and INCR through one node until stopped; every command must succeed."""

    def __init__(self, host: str, port: int, counter: str) -> None:
        super().__init__(daemon=True)
        self.r = redis.Redis(host=host, port=port, socket_timeout=10)
        self.counter = counter
        self.acked: dict[str, str] = {}
        self.incrs = 0
        self.problems: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            i += 1
            try:
                if self.r.set(f"{self.counter}:{i}", str(i)):
                    self.acked[f"{self.counter}:{i}"] = str(i)
                self.incrs += 1
                got = self.r.incr(self.counter)
                if got != self.incrs:
                    self.problems.append(f"INCR #{self.incrs} returned {got}")
            except (redis.RedisError, OSError) as e:
                self.problems.append(repr(e))
                return


def formed_without(lab_dir: Path, node: str) -> dict[str, Any] | None:
    snap = status(lab_dir)
    if snap["formed"] and snap["primary"] not in (None, node):
        return snap
    return None


def all_back(lab_dir: Path) -> dict[str, Any] | None:
    snap = status(lab_dir)
    roles = sorted(n["role"] for n in snap["nodes"])
    return snap if snap["formed"] and roles == ["backup", "backup", "primary"] else None


def check(writer: Writer, snap: dict[str, Any]) -> None:
    assert writer.problems == []
    keys = list(writer.acked)
    for n in snap["nodes"]:
        r = redis.Redis(host=n["client_host"], port=n["client_port"], socket_timeout=10)
        for i in range(0, len(keys), 50):
            batch = keys[i : i + 50]
            assert r.mget(batch) == [writer.acked[k].encode() for k in batch], n["name"]
        assert r.get(writer.counter) == str(writer.incrs).encode(), n["name"]


def test_network_faults_in_namespaces(lab_dir: Path) -> None:
    lab(lab_dir, "up", "--netns")
    snap = status(lab_dir)
    assert snap["mode"] == "netns"
    names = [n["name"] for n in snap["nodes"]]
    net = LabNetwork.for_lab(lab_dir, names)
    try:
        for fault in ("pull-network", "partition"):
            primary = snap["primary"]
            client = next(n for n in snap["nodes"] if n["name"] != primary)
            writer = Writer(client["client_host"], client["client_port"], f"c-{fault}")
            writer.start()
            wait_for("writes", lambda w=writer: w.incrs > 20 or None, 20)
            if fault == "pull-network":
                lab(lab_dir, "pull-network", primary)
            else:
                lab(lab_dir, "partition", primary, ",".join(n for n in names if n != primary))
            wait_for(f"a primary after {fault}", lambda p=primary: formed_without(lab_dir, p), 30)
            done = writer.incrs
            wait_for("writes after", lambda w=writer, d=done: w.incrs > d + 20 or None, 20)
            lab(
                lab_dir,
                "plug-network" if fault == "pull-network" else "heal",
                *([primary] if fault == "pull-network" else []),
            )
            snap = wait_for(f"{primary} back as a backup", lambda: all_back(lab_dir), 40)
            assert {n["name"]: n["role"] for n in snap["nodes"]}[primary] == "backup"
            writer.halt.set()
            writer.join(15)
            check(writer, snap)

        lab(lab_dir, "loss", "20")
        assert all(count == 1 for count in net.rules().values())
        client = snap["nodes"][0]
        writer = Writer(client["client_host"], client["client_port"], "c-loss")
        writer.start()
        wait_for("writes through 20% loss", lambda: writer.incrs > 100 or None, 60)
        writer.halt.set()
        writer.join(15)
        lab(lab_dir, "heal")
        assert all(count == 0 for count in net.rules().values())
        check(writer, wait_for("the cluster after the loss", lambda: all_back(lab_dir), 30))
    except BaseException:
        for log in sorted(lab_dir.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        lab(lab_dir, "down")
    assert net.leftovers() == []
