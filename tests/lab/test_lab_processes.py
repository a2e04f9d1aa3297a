"""The lab driven through its CLI, as a user drives it: up, status, faults, down.

A client writes through every node while the primary's power is pulled and, later, while the
new primary is frozen; each fault must end with exactly one primary serving, the faulty node
back as a backup (the fence's power-cycle powers it on again), and every acknowledged write
present on every node. ``down`` must leave no process behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from appliance.lab.cli import run_lab
from tests.lab.labcli import status
from tests.node.test_agent import wait_for
from tests.writer import Writer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def one_primary_formed(lab_dir: Path, not_node: str) -> dict[str, Any] | None:
    snap = status(lab_dir)
    roles = sorted(n["role"] for n in snap["nodes"])
    if snap["formed"] and roles == ["backup", "backup", "primary"] and snap["primary"] != not_node:
        return snap  # the faulty node is back too (the fence's power-cycle powered it on)
    return None


def test_lab_up_faults_and_down(lab_dir: Path) -> None:
    out = run_lab(lab_dir, "up", "--nodes", "3").stdout
    assert "redis-cli -p" in out
    snap = status(lab_dir)
    assert [n["name"] for n in snap["nodes"]] == ["n1", "n2", "n3"]
    assert snap["formed"] and snap["primary"] in ("n1", "n2", "n3")
    assert snap["multicast_group"].startswith("239.")
    ports = {n["name"]: n["client_port"] for n in snap["nodes"]}
    p = run_lab(lab_dir, "partition", "n1", "n2,n3", check=False)  # a processes lab has no network
    assert p.returncode == 1 and "--netns" in p.stderr, p.stderr
    pids = [n["pid"] for n in snap["nodes"]]
    try:
        for fault in ("pull-power", "freeze"):
            primary = snap["primary"]
            # Clients of the surviving nodes must never notice the fault.
            others = [("127.0.0.1", p) for name, p in ports.items() if name != primary]
            client = Writer(others, f"counter-{fault}")
            client.start()
            wait_for("writes", lambda c=client: c.incrs > 20 or None, 20)
            run_lab(lab_dir, fault, primary)
            snap = wait_for(
                f"a new primary after {fault} {primary}",
                lambda p=primary: one_primary_formed(lab_dir, p),
                30,
            )
            before = client.incrs
            wait_for("writes after", lambda c=client, b=before: c.incrs > b + 20 or None, 20)
            client.finish()
            # The fenced node was power-cycled and is back as a backup of the new view.
            roles = {n["name"]: n["role"] for n in snap["nodes"]}
            assert roles[primary] == "backup", snap
            pids += [n["pid"] for n in snap["nodes"]]
            client.check([("127.0.0.1", p) for p in ports.values()])
    except BaseException:
        for log in sorted(lab_dir.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        run_lab(lab_dir, "down")
    assert "no lab is running" in run_lab(lab_dir, "status", check=False).stderr
    wait_for("every lab process gone", lambda: not any(alive(p) for p in pids) or None, 10)


def test_commands_without_a_lab_explain_themselves(lab_dir: Path) -> None:
    for args in (("status",), ("partition", "n1", "n2,n3"), ("pull-power", "n1")):
        p = run_lab(lab_dir, *args, check=False)
        assert p.returncode == 1 and "no lab is running" in p.stderr, p.stderr


def test_demo_passes_and_cleans_up(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    p = run_lab(d, "demo", check=False, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    for line in (
        "power of n1 pulled",
        "suspected by",
        "fenced (outlet confirmed off)",
        "new primary",
        "rejoined as a backup",
        "PASS:",
    ):
        assert line in p.stdout, p.stdout
    assert not (d / "lab.json").exists()
