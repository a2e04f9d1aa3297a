"""The lab's network for ``--netns`` (root): every node in its own namespace on one bridge.

Each node gets a network namespace with an ``eth0`` (one end of a veth pair whose other end is
on the lab's bridge) and its own address in a /24 derived from the lab directory; the host
holds ``.1`` on the bridge, so clients, the power strip and the ``lab`` commands reach every
node from the host. Multicast crosses the bridge like a real switch. Faults are real:

* ``pull-network``: the host end of the node's veth goes down (the cable is out);
* ``partition A,B C``: iptables in every namespace drops what comes from the other side;
* ``loss PERCENT``: iptables ``-m statistic`` drops that share of every node's input.

Everything the lab creates carries its tag (from the lab directory), so :func:`teardown` can
remove all of it even after a crash: namespaces (killing what still runs in them), veths and
the bridge. The kernel removes a namespace's iptables rules with the namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabNetwork", "available"]

CHAIN = "APPLIANCE-LAB"


def available() -> str | None:
    """None if netns labs can run here, else why not."""
    if os.geteuid() != 0:
        return "--netns needs root (network namespaces, veth pairs, a bridge and iptables)"
    for tool in ("ip", "iptables"):
        if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")):
            pkg = "iproute2" if tool == "ip" else "iptables"
            return f"--netns needs {tool} (apt-get install {pkg})"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


@dataclass(frozen=True, slots=True)
class LabNetwork:
    """Names and addresses of one lab's network (all derived from the lab directory)."""

    tag: str
    """Six hex digits naming everything this lab creates."""
    subnet: str
    """``10.A.B`` of the lab's /24."""
    names: tuple[str, ...]

    @classmethod
    def for_lab(cls, lab_dir: Path, names: list[str]) -> LabNetwork:
        h = hashlib.sha256(b"netns\0" + str(lab_dir.resolve()).encode()).digest()
        return cls(h[:3].hex(), f"10.{200 + h[3] % 50}.{h[4]}", tuple(names))

    @property
    def bridge(self) -> str:
        return f"alb{self.tag}"

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def witness_address(self) -> str:
        """A second host address on the bridge, the nodes' fencing witness.

        It plays the LAN gateway of a real cluster: a node fences only while it reaches it.
        ``partition`` cuts it off from every side without a strict majority, so an isolated
        primary cannot fence the healthy majority through the power strip (which, being the
        out-of-band power network, both sides still reach). Nothing listens on it: a refused
        connection (an RST from the host) is the proof of reachability the check asks for.
        """
        return f"{self.subnet}.2"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{10 + self.names.index(name) + 1}"

    def namespace(self, name: str) -> str:
        return f"alab-{self.tag}-{name}"

    def host_veth(self, name: str) -> str:
        return f"alv{self.tag}{self.names.index(name) + 1}"

    def exec_prefix(self, name: str) -> list[str]:
        """Run a command inside the node's namespace."""
        return ["ip", "netns", "exec", self.namespace(name)]

    # -- building and removing ---------------------------------------------------------------

    def setup(self) -> None:
        self.teardown()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _run("ip", "addr", "add", f"{self.witness_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for name in self.names:
            ns, veth = self.namespace(name), self.host_veth(name)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", self.bridge)
            _run("ip", "link", "set", veth, "up")
            inside = self.exec_prefix(name)
            _run(*inside, "ip", "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "route", "add", "default", "via", self.host_address)
            _run(*inside, "iptables", "-N", CHAIN)
            _run(*inside, "iptables", "-I", "INPUT", "-j", CHAIN)

    def teardown(self) -> None:
        """Remove everything of this lab's network that exists; idempotent."""
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        for name in self.names:
            ns = self.namespace(name)
            if ns in listed:
                pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                _run("ip", "netns", "del", ns, check=False)
            _run("ip", "link", "del", self.host_veth(name), check=False)
        _run("ip", "link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """What of this lab's network still exists (for tests and ``down``)."""
        out = []
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        out += [self.namespace(n) for n in self.names if self.namespace(n) in listed]
        links = _run("ip", "-o", "link", "show", check=False).stdout
        out += [
            dev for dev in [self.bridge, *map(self.host_veth, self.names)] if f" {dev}" in links
        ]
        return out

    # -- faults ------------------------------------------------------------------------------

    def link(self, name: str, up: bool) -> None:
        _run("ip", "link", "set", self.host_veth(name), "up" if up else "down")

    def link_up(self, name: str) -> bool:
        out = _run("ip", "-o", "link", "show", self.host_veth(name), check=False).stdout
        return "state UP" in out or ("<" in out and ",UP" in out.split(">")[0])

    def _flush(self) -> None:
        for name in self.names:
            _run(*self.exec_prefix(name), "iptables", "-F", CHAIN)

    def partition(self, groups: list[list[str]]) -> None:
        """Each node hears only the nodes of its own group (and the host); only a group with a
        strict majority of the nodes still reaches the witness."""
        known = set(self.names)
        for g in groups:
            for n in g:
                if n not in known:
                    raise ValueError(f"no node {n!r} in this lab (nodes: {', '.join(self.names)})")
        self._flush()
        side = {n: i for i, g in enumerate(groups) for n in g}
        for name in self.names:
            for other in self.names:
                if other != name and side.get(other, -1) != side.get(name, -2):
                    _run(
                        *self.exec_prefix(name),
                        "iptables",
                        "-A",
                        CHAIN,
                        "-s",
                        self.address(other),
                        "-j",
                        "DROP",
                    )
            if 2 * len(groups[side[name]] if name in side else [name]) <= len(self.names):
                _run(
                    *self.exec_prefix(name),
                    "iptables",
                    "-A",
                    CHAIN,
                    "-s",
                    self.witness_address,
                    "-j",
                    "DROP",
                )

    def loss(self, percent: float) -> None:
        """Drop ``percent`` % of every node's input (0 clears it; partitions are cleared too)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss {percent}: expected a percentage 0..100")
        self._flush()
        if percent == 0:
            return
        for name in self.names:
            _run(
                *self.exec_prefix(name),
                "iptables",
                "-A",
                CHAIN,
                "-s",
                f"{self.subnet}.0/24",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                f"{percent / 100:.4f}",
                "-j",
                "DROP",
            )

    def heal(self) -> None:
        """No partition, no loss, every cable plugged."""
        self._flush()
        for name in self.names:
            self.link(name, True)

    def rules(self) -> dict[str, int]:
        """How many drop rules each node's namespace holds."""
        out = {}
        for name in self.names:
            text = _run(*self.exec_prefix(name), "iptables", "-S", CHAIN, check=False).stdout
            out[name] = sum(1 for line in text.splitlines() if line.startswith("-A"))
        return out
