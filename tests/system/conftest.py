"""The system test's cluster: three booted Debian nodes provisioned by the real site.yml.

Root only; it skips, saying what is missing, without root, systemd-nspawn, debootstrap (for
the first build of the cached root), ssh or ansible-playbook. Everything it creates (containers,
the bridge and veths, overlay mounts, the strip, ssh masters) is removed at the end, also when
a test fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import image
from tests.system.nodes import Nodes
from tests.system.playbook import BIN, PlaybookRun, close_ssh_masters, run_playbook, write_inventory
from tests.system.power import NodeStrip

NAMES = ("node1", "node2", "node3")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "the system test needs root (systemd-nspawn containers, a bridge, overlay mounts)"
    tools = {
        "systemd-nspawn": "systemd-container",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        "ip": "iproute2",
    }
    if not (image.image_path() / ".complete").exists():
        tools["debootstrap"] = "debootstrap"
    for tool, package in tools.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"the system test needs {tool} (apt-get install {package})"
    if not (BIN / "ansible-playbook").exists():
        return "the system test needs ansible-playbook in the venv (pip install -e '.[dev]')"
    return None


@dataclass
class Cluster:
    nodes: Nodes
    strip: NodeStrip
    inventory: Path
    workdir: Path
    first_run: PlaybookRun

    def playbook(self) -> PlaybookRun:
        return run_playbook(self.inventory, self.workdir)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    root = image.ensure_image()
    workdir = Path(tempfile.mkdtemp(prefix="appliance-system-"))
    tag = f"{os.getpid() % 0x10000:04x}"
    nodes = Nodes(tag, f"10.251.{os.getpid() % 250}", workdir / "nodes", root, NAMES)
    strip: NodeStrip | None = None
    try:
        nodes.setup()
        strip = NodeStrip(nodes.nodes, nodes.host_address)
        started = time.monotonic()
        nodes.boot_all()
        print(f"\nbooted {len(NAMES)} nodes in {time.monotonic() - started:.1f} s")
        inventory = write_inventory(workdir / "inventory", nodes, strip.url)
        first = run_playbook(inventory, workdir)
        print(f"first site.yml run: {first.seconds:.1f} s")
        yield Cluster(nodes, strip, inventory, workdir, first)
    finally:
        if strip is not None:
            strip.close()
        close_ssh_masters(workdir)
        nodes.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
        left = nodes.leftovers()
        assert left == [], f"left behind: {left}"
