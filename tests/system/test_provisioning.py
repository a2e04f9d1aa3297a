"""site.yml provisions three booted Debian nodes into a working cluster, for real.

The tests run in this order on one cluster (conftest.py): the first playbook run succeeded; the
agent runs under systemd as Type=notify and is READY; clients write through every node; a
pulled plug on the primary is survived with no acknowledged write lost and the node rejoins
after its power-cycle; a second playbook run changes nothing; a frozen agent is killed and
restarted by systemd's watchdog (last: it stops the other agents).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from tests.system.conftest import Cluster
from tests.system.nodes import Node, wait_until
from tests.writer import Writer, connect

CLIENT_PORT = 6379


def status(node: Node) -> dict[str, Any] | None:
    """``appliance status --json`` on the node, or None if the agent does not answer."""
    out = node.ssh("appliance status --json --timeout 2", timeout=20, check=False)
    try:
        reply = json.loads(out)
    except json.JSONDecodeError:
        return None
    return reply if isinstance(reply, dict) and reply.get("ok") else None


def unit(node: Node, *props: str) -> dict[str, str]:
    out = node.ssh(f"systemctl show appliance -p {','.join(props)}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def formed(cluster: Cluster, names: set[str]) -> dict[str, dict[str, Any]] | None:
    """Every node of ``names`` reports one and the same primary and exactly ``names`` as members."""
    replies = {}
    for name in names:
        s = status(cluster.nodes.by_name(name))
        if s is None or s["role"] not in ("primary", "backup"):
            return None
        if {m["name"] for m in s["members"]} != names:
            return None
        replies[name] = s
    primaries = {s["primary"] for s in replies.values()}
    return replies if len(primaries) == 1 else None


def primary_of(replies: dict[str, dict[str, Any]]) -> str:
    return next(name for name, s in replies.items() if s["role"] == "primary")


def test_first_run_provisions_every_node(cluster: Cluster) -> None:
    run = cluster.first_run
    assert run.returncode == 0, run.output[-6000:]
    recap = run.recap()
    assert set(recap) >= {n.name for n in cluster.nodes.nodes}, run.output[-3000:]
    for host, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (host, counts)
    assert "cluster formed: primary" in run.output


def test_agent_runs_as_notify_service_and_is_ready(cluster: Cluster) -> None:
    for node in cluster.nodes.nodes:
        props = unit(
            node, "Type", "NotifyAccess", "ActiveState", "SubState", "StatusText", "WatchdogUSec"
        )
        assert props["Type"] == "notify", (node.name, props)
        assert props["NotifyAccess"] == "main", (node.name, props)
        # active/running is only reached with READY=1: until then a notify unit is activating
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert props["StatusText"], (node.name, props)
        assert props["WatchdogUSec"] == "5s", (node.name, props)
        shown = node.ssh("systemctl status appliance --no-pager --lines=0", check=False)
        assert re.search(r'^\s*Status: ".+"$', shown, re.M), shown
        key = node.ssh("stat -c '%a %U' /etc/appliance/cluster.key").split()
        assert key == ["600", "appliance"], (node.name, key)
    configs = {n.ssh("sha256sum < /etc/appliance/cluster.toml") for n in cluster.nodes.nodes}
    assert len(configs) == 1, "every node must get the same cluster.toml"


def test_clients_write_through_every_node(cluster: Cluster) -> None:
    nodes = cluster.nodes.nodes
    for writer in nodes:
        r = connect(writer.address, CLIENT_PORT)
        assert r.set(f"via:{writer.name}", writer.name) is True
    for reader in nodes:
        r = connect(reader.address, CLIENT_PORT)
        got = r.mget([f"via:{n.name}" for n in nodes])
        assert got == [n.name.encode() for n in nodes], reader.name


def test_power_pull_of_the_primary_loses_no_acknowledged_write(cluster: Cluster) -> None:
    names = {n.name for n in cluster.nodes.nodes}
    replies = wait_until("a formed cluster", 60, lambda: formed(cluster, names))
    primary = cluster.nodes.by_name(primary_of(replies))
    backups = [n for n in cluster.nodes.nodes if n is not primary]
    writer = Writer([(n.address, CLIENT_PORT) for n in backups])
    writer.start()
    try:
        wait_until(
            "writes before the pull", 30, lambda: len(writer.acked) >= 100 or writer.problems
        )
        before = len(writer.acked)
        pulled = time.monotonic()
        cluster.strip.switch(primary.index, False)  # SIGKILL of the container's init
        survivors = {n.name for n in backups}

        def new_primary() -> str | None:
            for n in backups:
                s = status(n)
                if s is not None and s["role"] == "primary":
                    return n.name
            return None

        took_over = wait_until("a backup to take over", 30, new_primary)
        print(f"\n{took_over} primary {time.monotonic() - pulled:.1f} s after the pull")
        wait_until(
            "writes after the take-over",
            30,
            lambda: len(writer.acked) >= before + 100 or writer.problems,
        )
    finally:
        writer.finish()
    assert writer.problems == []
    writer.check([(n.address, CLIENT_PORT) for n in backups])
    assert wait_until("the survivors to form", 30, lambda: formed(cluster, survivors) or None)
    # After the pull (the first switch), a survivor fenced it (Power Off on the strip) and
    # power-cycled it (Power On after off_hold_ms).
    wait_until("the power-cycle's power-on", 30, lambda: primary.powered)
    switches = [
        s.on for s in cluster.strip.switches if s.outlet == primary.index and s.at >= pulled
    ]
    assert switches[0] is False and False in switches[1:] and switches[-1] is True, switches
    wait_until("the rebooted node to rejoin", 120, lambda: formed(cluster, names), 1.0)
    writer.check([(primary.address, CLIENT_PORT)])
    print(f"{len(writer.acked)} acknowledged writes on every node, {writer.incrs} INCRs")


def test_second_run_changes_nothing(cluster: Cluster) -> None:
    run = cluster.playbook()
    print(f"\nsecond site.yml run: {run.seconds:.1f} s")
    assert run.returncode == 0, run.output[-6000:]
    recap = run.recap()
    assert set(recap) >= {n.name for n in cluster.nodes.nodes}
    for host, counts in recap.items():
        assert counts["changed"] == 0, (host, counts, run.changed_tasks())
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (host, counts)


def test_frozen_agent_is_restarted_by_the_watchdog(cluster: Cluster) -> None:
    # Alone, so that no peer fences (power-cycles) the frozen node first: that would hide the
    # watchdog. The others stop gracefully (they leave the group; nobody is fenced).
    names = {n.name for n in cluster.nodes.nodes}
    replies = wait_until("a formed cluster", 60, lambda: formed(cluster, names))
    node = cluster.nodes.by_name(primary_of(replies))
    for other in cluster.nodes.nodes:
        if other is not node:
            other.ssh("systemctl stop appliance")
    wait_until("the primary alone", 30, lambda: formed(cluster, {node.name}))
    before = unit(node, "MainPID", "NRestarts")
    node.ssh(f"kill -STOP {before['MainPID']}")
    frozen = time.monotonic()

    def restarted() -> dict[str, str] | None:
        now = unit(node, "MainPID", "NRestarts")
        changed = now["MainPID"] not in ("0", before["MainPID"])
        return now if changed and int(now["NRestarts"]) > int(before["NRestarts"]) else None

    after = wait_until("systemd to restart the frozen agent", 60, restarted, 0.5)
    print(
        f"\nwatchdog restart {time.monotonic() - frozen:.1f} s after SIGSTOP: {before} -> {after}"
    )
    journal = node.ssh("journalctl -u appliance --no-pager -o cat")
    assert "Watchdog timeout" in journal, journal[-3000:]
