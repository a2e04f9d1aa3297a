"""The netns lab (root): real network faults between nodes in their own namespaces.

Pulling the primary's network cable ends with one primary on the connected side, the old
primary fenced (the power strip sits outside the cluster network, as a fence device should) and
back as a backup once the cable is plugged in; a backup partitioned away is fenced by the
primary and rejoins after the partition heals; 20% packet loss on every link slows writes but
loses none; ``down`` leaves no namespace, link or rule behind. Clients of the nodes that stay
connected must never notice (redis-py's own retries are off, so nothing is hidden).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.lab.cli import run_lab
from appliance.lab.netns import LabNetwork, available
from tests.lab.labcli import status
from tests.node.test_agent import wait_for
from tests.writer import Writer

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def formed_without(lab_dir: Path, node: str) -> dict[str, Any] | None:
    """One primary other than ``node``, every other node its backup (``node`` may be cut off)."""
    snap = status(lab_dir)
    rest = [n for n in snap["nodes"] if n["name"] != node]
    roles = sorted(n["role"] for n in rest)
    views = {n["view"] for n in rest}
    if roles == ["backup", "primary"] and len(views) == 1 and snap["primary"] != node:
        return snap
    return None


def all_back(lab_dir: Path) -> dict[str, Any] | None:
    snap = status(lab_dir)
    roles = sorted(n["role"] for n in snap["nodes"])
    return snap if snap["formed"] and roles == ["backup", "backup", "primary"] else None


def check(writer: Writer, snap: dict[str, Any]) -> None:
    writer.check([(n["client_host"], n["client_port"]) for n in snap["nodes"]])


def test_network_faults_in_namespaces(lab_dir: Path) -> None:
    run_lab(lab_dir, "up", "--netns")
    snap = status(lab_dir)
    assert snap["mode"] == "netns"
    names = [n["name"] for n in snap["nodes"]]
    net = LabNetwork.for_lab(lab_dir, names)
    try:
        for fault in ("pull-network", "partition"):
            primary = snap["primary"]
            backups = [n["name"] for n in snap["nodes"] if n["name"] != primary]
            # pull-network: the primary's cable; partition: the last backup is cut off.
            victim = primary if fault == "pull-network" else backups[-1]
            client = next(n for n in snap["nodes"] if n["name"] not in (primary, victim))
            writer = Writer([(client["client_host"], client["client_port"])], f"c-{fault}")
            writer.start()
            wait_for("writes", lambda w=writer: w.incrs > 20 or None, 20)
            if fault == "pull-network":
                run_lab(lab_dir, "pull-network", victim)
            else:
                run_lab(lab_dir, "partition", victim, ",".join(n for n in names if n != victim))
            wait_for(f"the group without {victim}", lambda v=victim: formed_without(lab_dir, v), 30)
            done = writer.incrs
            wait_for("writes after", lambda w=writer, d=done: w.incrs > d + 20 or None, 20)
            if fault == "pull-network":
                run_lab(lab_dir, "plug-network", victim)
            else:
                run_lab(lab_dir, "heal")
            snap = wait_for(f"{victim} back as a backup", lambda: all_back(lab_dir), 40)
            assert {n["name"]: n["role"] for n in snap["nodes"]}[victim] == "backup"
            writer.finish()
            check(writer, snap)

        run_lab(lab_dir, "loss", "20")
        assert all(count == 1 for count in net.rules().values())
        client = snap["nodes"][0]
        writer = Writer([(client["client_host"], client["client_port"])], "c-loss")
        writer.start()
        wait_for("writes through 20% loss", lambda: writer.incrs > 100 or None, 60)
        writer.finish()
        run_lab(lab_dir, "heal")
        assert all(count == 0 for count in net.rules().values())
        check(writer, wait_for("the cluster after the loss", lambda: all_back(lab_dir), 30))
    except BaseException:
        for log in sorted(lab_dir.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        run_lab(lab_dir, "down")
    assert net.leftovers() == []
