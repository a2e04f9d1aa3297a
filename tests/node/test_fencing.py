"""No fence, no exclusion: three real agents fencing through a real HTTP smart plug.

The agents are wired to each other by the lab's emulated heartbeat wires and fence through a
Tasmota plug server on 127.0.0.1 (one outlet per node) that switches nothing by itself: the
test kills processes and drives wires, so it decides what the plug's answers are worth.

* The primary crashes and the plug lies (it answers ON to ``Power Off``): no backup may become
  primary, however long it waits; once the plug works, one does.
* The new primary crashes but its wire keeps toggling (a relay wired to the wrong node: the
  plug says OFF, yet something with this node's heartbeat still runs): the fence is not
  accepted and nobody takes over; once the wire goes flat, the last node takes over.

Each node's role is read from its own control channel, which answers without a primary.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.node.control import ControlError, request
from tests.hw.plugs import PlugState, plug_server
from tests.node.test_agent import Cluster, Node, free_port, wait_for, write_key

NAMES = ("n1", "n2", "n3")
WIRE_OUT = 4


TOGGLE = """\
import sys, time
path = sys.argv[1]
level = False
writes = 0
while True:
    level = not level
    with open(path, "wb") as f:
        f.write(b"1" if level else b"0")
    writes += 1
    if writes == 2:  # one whole toggle
        print("toggling", flush=True)
    time.sleep(0.01)
"""
"""A heartbeat wire that keeps toggling after its node died (its power was not cut)."""


def write_config(tmp_path: Path, plug: str) -> tuple[Path, dict[str, Node]]:
    write_key(tmp_path)
    nodes = {name: Node(name, free_port()) for name in NAMES}
    lines = [
        "[cluster]",
        f'name = "fence-test-{random.randrange(1 << 30)}"',
        'key_file = "cluster.key"',
        "[network]",
        f'multicast_group = "239.255.78.{random.randrange(1, 255)}"',
        f"port = {random.randrange(20000, 60000)}",
        'interface = "127.0.0.1"',
        "[timing]",
        "heartbeat_ms = 30",
        "silence_timeout_ms = 400",
        "flat_wire_timeout_ms = 100",
        "fence_retry_ms = 100",
    ]
    for i, node in enumerate(nodes.values(), 1):
        wires_in = ", ".join(
            f"{p} = {WIRE_OUT + j}" for j, p in enumerate(NAMES, 1) if p != node.name
        )
        lines += [
            "[[nodes]]",
            f'name = "{node.name}"',
            f"id = {i}",
            'address = "127.0.0.1"',
            f"client_port = {node.port}",
            f"state_port = {free_port()}",
            f'control_socket = "{tmp_path / (node.name + ".ctl")}"',
            f"heartbeat_out_pin = {WIRE_OUT}",
            f"heartbeat_in = {{ {wires_in} }}",
            'fence_action = "off"',
            "[[nodes.fence]]",
            'type = "tasmota"',
            f'url = "{plug}"',
            f"channel = {i}",
            "timeout_ms = 1000",
        ]
    config = tmp_path / "cluster.toml"
    config.write_text("\n".join(lines) + "\n")
    return config, nodes


def role(tmp_path: Path, name: str) -> str | None:
    try:
        reply = request(tmp_path / f"{name}.ctl", {"version": 1, "request": "status"}, 1.0)
    except ControlError:
        return None
    value = reply.get("role")
    return str(value) if value is not None else None


def never_primary(tmp_path: Path, names: list[str], seconds: float) -> None:
    """For ``seconds``, none of ``names`` reports itself primary."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        roles = {n: role(tmp_path, n) for n in names}
        assert "primary" not in roles.values(), roles
        time.sleep(0.05)


@pytest.fixture
def plug() -> Iterator[tuple[str, PlugState]]:
    with plug_server(PlugState(outlets={1: True, 2: True, 3: True})) as p:
        yield p


def kill(node: Node) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(5)


def test_no_promotion_without_a_confirmed_fence(
    tmp_path: Path, plug: tuple[str, PlugState]
) -> None:
    url, state = plug
    config, nodes = write_config(tmp_path, url)
    cluster = Cluster(tmp_path, config, nodes)
    wires = tmp_path / "wires"
    env = {"APPLIANCE_LAB_WIRES": str(wires)}
    toggler: subprocess.Popen[str] | None = None
    try:
        for name in NAMES:
            cluster.start(name, env)

        def formed() -> str | None:
            roles = {n: role(tmp_path, n) for n in NAMES}
            ok = sorted(str(r) for r in roles.values()) == ["backup", "backup", "primary"]
            return next(n for n, r in roles.items() if r == "primary") if ok else None

        first = wait_for("all three nodes in one view", formed, 30)

        # 1. The primary crashes; the plug lies. Nobody may take over.
        state.lie = True
        kill(nodes[first])
        rest = [n for n in NAMES if n != first]
        wait_for("a fence attempt", lambda: any("Off" in p for p in state.paths) or None, 10)
        never_primary(tmp_path, rest, 2.0)
        assert "answered ON to Power Off" in cluster.logs()
        state.lie = False  # the plug works again: the next retry fences, a backup takes over
        second = wait_for(
            "a primary once the plug works",
            lambda: next((n for n in rest if role(tmp_path, n) == "primary"), None),
            20,
        )

        # 2. The new primary crashes, but its wire keeps toggling: its fence is not accepted.
        last = next(n for n in rest if n != second)

        mark = len((tmp_path / f"{last}.log").read_text())
        # The test now toggles the dead node's wire, from a process of its own (a thread of
        # this one can be held off the interpreter long enough to look flat); it starts
        # toggling before the node dies, so the wire never stops.
        toggler = subprocess.Popen(
            [sys.executable, "-c", TOGGLE, str(wires / f"{second}.out")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert toggler.stdout is not None and toggler.stdout.readline() == "toggling\n"
        kill(nodes[second])
        wait_for(
            "a fence of the second primary",
            lambda: sum("Off" in p for p in state.paths) >= 2 or None,
            10,
        )
        never_primary(tmp_path, [last], 3.0)  # the wire proof waits 2 s, then the fence fails
        since = (tmp_path / f"{last}.log").read_text()[mark:]
        assert "FAILED" in since and "wire" in since, since
        toggler.kill()  # the wire goes flat: the fence is proven, the last node takes over
        toggler.wait(5)
        wait_for("the last node as primary", lambda: role(tmp_path, last) == "primary" or None, 20)
        assert last != second != first
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        if toggler is not None:
            toggler.kill()
            toggler.wait(5)
        cluster.stop_all()
