"""Booted Debian nodes for the system test: systemd-nspawn containers on a bridge of our own.

Each node is the cached debootstrap root (image.py) under an overlay of its own (its "SD card":
what it writes survives a power-cycle), booted with systemd as PID 1 in its own network
namespace, its ``host0`` on the test's bridge with a static address (systemd-networkd,
``10-host0.network``: the image's ``80-container-host0.network`` would win over a later name),
sshd with the test's key in root's ``authorized_keys``. The host holds ``.1`` on the bridge.

Power is real: :meth:`Node.power_off` SIGKILLs the container's init (the child of
``systemd-nspawn``, PID 1 inside), so the whole PID namespace dies at once, as when a plug is
pulled; :meth:`Node.power_on` boots it again from the same overlay. Everything created here is
named after the test's tag and removed by :meth:`Nodes.teardown`, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=3",
    "-o", "BatchMode=yes",
)  # fmt: skip


def run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise OSError(f"{' '.join(argv)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def wait_until(what: str, deadline_s: float, probe: Callable[[], T], interval: float = 0.2) -> T:
    """Poll ``probe()`` until it returns something truthy; AssertionError after the deadline."""
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Node:
    name: str
    """Hostname, inventory name and node name in cluster.toml."""
    index: int
    """1-based: node id, outlet (Power channel) and last octet - 10."""
    machine: str
    """systemd-nspawn machine name (short: the host-side veth is vb-MACHINE)."""
    address: str
    base: Path
    image: Path
    bridge: str
    ssh_key: Path
    proc: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def console_log(self) -> Path:
        return self.base / "console.log"

    @property
    def powered(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def prepare(self, prefix: int) -> None:
        """Mount the overlay and give the copy its address, host keys and root's ssh key."""
        for d in ("upper", "work", "root"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.image},upperdir={self.base / 'upper'},workdir={self.base / 'work'}"
        run("mount", "-t", "overlay", "overlay", "-o", opts, str(self.root))
        net = self.root / "etc/systemd/network/10-host0.network"
        net.parent.mkdir(parents=True, exist_ok=True)
        net.write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={self.address}/{prefix}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        run("ssh-keygen", "-q", "-A", "-f", str(self.root))
        ssh_dir = self.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(self.ssh_key.with_suffix(".pub").read_text())
        keys.chmod(0o600)

    def power_on(self) -> None:
        """Boot (no-op while it runs); returns once systemd-nspawn runs, not when booted."""
        with self.lock:
            if self.powered:
                return
            with open(self.console_log, "ab") as out:
                self.proc = subprocess.Popen(
                    [
                        "systemd-nspawn", "-q", "--register=no", "--keep-unit",
                        f"--machine={self.machine}", "-D", str(self.root),
                        f"--network-bridge={self.bridge}", "-b",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip

    def power_off(self) -> None:
        """Pull the plug: SIGKILL the container's init, wait until it and nspawn are gone."""
        with self.lock:
            proc, self.proc = self.proc, None
            if proc is None:
                return
            with contextlib.suppress(AssertionError):
                pid = wait_until("the container's init", 10, self._init_of(proc), 0.05)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            run("ip", "link", "del", f"vb-{self.machine}", check=False)

    @staticmethod
    def _init_of(proc: subprocess.Popen[bytes]) -> Callable[[], int | None]:
        """A probe for the container's init: systemd-nspawn's child process."""

        def probe() -> int | None:
            if proc.poll() is not None:
                return None
            kids: list[int] = []
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    kids += [int(c) for c in (task / "children").read_text().split()]
            return kids[0] if kids else None

        return probe

    def ssh(self, command: str, timeout: float = 60, check: bool = True) -> str:
        p = subprocess.run(
            ["ssh", *SSH_OPTIONS, "-i", str(self.ssh_key), f"root@{self.address}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{self.name}: {command!r}: exit {p.returncode}: {p.stderr}")
        return p.stdout

    def ssh_ok(self) -> bool:
        """sshd answers and lets us in."""
        p = subprocess.run(
            ["ssh", *SSH_OPTIONS, "-i", str(self.ssh_key), f"root@{self.address}", "true"],
            capture_output=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        return p.returncode == 0

    def release(self) -> None:
        self.power_off()
        if self.root.is_mount():
            run("umount", str(self.root), check=False)
        if not self.root.is_mount():
            shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Nodes:
    """The test's bridge and its nodes; :meth:`teardown` removes all of it."""

    tag: str
    subnet: str
    """``10.A.B`` of the bridge's /24."""
    base: Path
    image: Path
    names: tuple[str, ...]
    nodes: list[Node] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"asys{self.tag}"

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def ssh_key(self) -> Path:
        return self.base / "id_ed25519"

    def setup(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_key))
        run("ip", "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
        run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(self.names, 1):
            node = Node(
                name,
                i,
                f"s{self.tag}n{i}",
                f"{self.subnet}.{10 + i}",
                self.base / name,
                self.image,
                self.bridge,
                self.ssh_key,
            )
            self.nodes.append(node)
            node.prepare(24)

    def boot_all(self, deadline_s: float = 60) -> None:
        for node in self.nodes:
            node.power_on()
        for node in self.nodes:
            wait_until(f"ssh to {node.name}", deadline_s, node.ssh_ok, 0.5)

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def teardown(self) -> None:
        for node in self.nodes:
            node.release()
        run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def leftovers(self) -> list[str]:
        links = run("ip", "-o", "link", "show", check=False).stdout
        out = [
            d for d in [self.bridge, *(f"vb-{n.machine}" for n in self.nodes)] if f" {d}" in links
        ]
        out += [str(n.root) for n in self.nodes if n.root.is_mount()]
        out += [f"systemd-nspawn pid {n.proc.pid}" for n in self.nodes if n.powered and n.proc]
        return out
