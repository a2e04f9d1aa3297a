"""Where a lab lives: its directory, ports, multicast group, cluster file and key.

Everything is derived from the lab directory, so two labs in different directories get
different ports and multicast groups and never hear each other, and the same directory gets the
same ones every time (a restarted lab keeps its client ports). Derived ports that are taken are
skipped in steps, so a busy machine still finds a free block.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.lab.netns import LabNetwork
from appliance.protocols.replication import Style

__all__ = ["LabLayout", "LabState", "NodeState", "default_dir"]

PORT_BASE = 12000
PORT_SPAN = 20000
"""Labs take their ports in 12000-31999: below Linux's ephemeral range (32768-60999), from
which every outgoing connection gets its local port. Inside it, a client connection opened
while a lab booted (a benchmark's peers, a test's probe) could take a port the lab had chosen
for an agent that had not bound it yet ("address already in use")."""
BLOCK = 20
"""Ports per lab: the power strip, the multicast group, then a client and a state port per node."""
MAX_NODES = (BLOCK - 2) // 2
WIRE_OUT_PIN = 4
"""Every lab node's heartbeat output; node j's wire arrives on input pin ``WIRE_OUT_PIN + j``."""
STATE_FILE = "lab.json"


def default_dir() -> Path:
    """``$XDG_RUNTIME_DIR/appliance-lab``, else ``~/.cache/appliance/lab``, else a temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "appliance-lab"
    home = Path.home()
    if home.is_dir() and os.access(home, os.W_OK):
        return home / ".cache" / "appliance" / "lab"
    return Path(tempfile.gettempdir()) / f"appliance-lab-{os.getuid()}"


def _digest(d: Path) -> int:
    return int.from_bytes(hashlib.sha256(str(d.resolve()).encode()).digest()[:8], "big")


def _free(kind: socket.SocketKind, host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class LabLayout:
    """A lab of ``nodes`` agents on loopback, described by its directory."""

    dir: Path
    nodes: int
    strip_port: int
    """The emulated power strip (Tasmota HTTP API), one outlet (``PowerN``) per node."""
    multicast_port: int
    multicast_group: str
    replication: Style
    network: LabNetwork | None = None
    """``--netns``: every node in its own network namespace on a bridge."""

    @classmethod
    def derive(
        cls, lab_dir: Path, nodes: int, replication: Style, netns: bool = False
    ) -> LabLayout:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes {nodes}: expected 1..{MAX_NODES}")
        lab_dir = lab_dir.resolve()
        h = _digest(lab_dir)
        group = f"239.255.{(h >> 8) % 254 + 1}.{h % 254 + 1}"
        blocks = PORT_SPAN // BLOCK
        first = (h >> 16) % blocks
        for i in range(64):
            base = PORT_BASE + ((first + i) % blocks) * BLOCK
            tcp = [
                base,
                *range(base + 2, base + 2 + nodes),
                *range(base + 2 + MAX_NODES, base + 2 + MAX_NODES + nodes),
            ]
            tcp_free = all(_free(socket.SOCK_STREAM, "127.0.0.1", p) for p in tcp)
            if tcp_free and _free(socket.SOCK_DGRAM, "0.0.0.0", base + 1):
                names = [f"n{i}" for i in range(1, nodes + 1)]
                net = LabNetwork.for_lab(lab_dir, names) if netns else None
                return cls(lab_dir, nodes, base, base + 1, group, replication, net)
        raise OSError(f"no free block of {BLOCK} ports found for the lab in {lab_dir}")

    @property
    def names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def client_port(self, name: str) -> int:
        return self.strip_port + 2 + self.names.index(name)

    def state_port(self, name: str) -> int:
        """Where the node serves state transfers (point-to-point, TCP)."""
        return self.strip_port + 2 + MAX_NODES + self.names.index(name)

    @property
    def wires_dir(self) -> Path:
        """The emulated heartbeat wires (see :mod:`appliance.lab.wires`)."""
        return self.dir / "wires"

    def address(self, name: str) -> str:
        """Where the node listens (clients, state transfer)."""
        return "127.0.0.1" if self.network is None else self.network.address(name)

    @property
    def strip_host(self) -> str:
        """Where the power strip listens: reachable from the host and from every node."""
        return "127.0.0.1" if self.network is None else self.network.host_address

    @property
    def mode(self) -> str:
        return "processes" if self.network is None else "netns"

    @property
    def config_path(self) -> Path:
        return self.dir / "cluster.toml"

    @property
    def key_path(self) -> Path:
        return self.dir / "cluster.key"

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def write_files(self, silence_timeout_ms: int = 300) -> None:
        """The lab's cluster file and key (a fresh key on every ``up``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(32).hex().encode() + b"\n")
        finally:
            os.close(fd)
        os.chmod(self.key_path, 0o600)
        lines = [
            "# Generated by `appliance lab up`: a lab cluster on loopback. Do not edit; it is",
            "# rewritten on every `up`.",
            "[cluster]",
            f'name = "lab-{_digest(self.dir) % 10**8:08d}"',
            f'replication = "{self.replication.value}"',
            'key_file = "cluster.key"',
            "",
            "[network]",
            f'multicast_group = "{self.multicast_group}"',
            f"port = {self.multicast_port}",
            # processes: all on loopback; netns: each node's eth0 on the lab's bridge
            f'interface = "{"127.0.0.1" if self.network is None else "eth0"}"',
            "",
            "[timing]",
            "# One machine runs every node, its clients and their checks: allow for scheduling",
            "# hiccups a dedicated Pi does not have.",
            f"silence_timeout_ms = {silence_timeout_ms}",
            "flat_wire_timeout_ms = 100",
            "",
        ]
        for i, name in enumerate(self.names, 1):
            lines += [
                "[[nodes]]",
                f'name = "{name}"',
                f"id = {i}",
                f'address = "{self.address(name)}"',
                f"client_port = {self.client_port(name)}",
                f"state_port = {self.state_port(name)}",
                f'control_socket = "{self.dir / (name + ".ctl")}"',
                "# Emulated heartbeat wires (files under wires/): every node sees every other.",
                f"heartbeat_out_pin = {WIRE_OUT_PIN}",
                "heartbeat_in = { "
                + ", ".join(
                    f"{peer} = {WIRE_OUT_PIN + j}"
                    for j, peer in enumerate(self.names, 1)
                    if peer != name
                )
                + " }",
                'fence_action = "power-cycle"',
                "off_hold_ms = 500",
                *(
                    [
                        "# The lab's witness (a host address on the bridge): only a majority",
                        "# side of a partition reaches it, and only a node that does may fence.",
                        f'witness = "{self.network.witness_address}"',
                    ]
                    if self.network is not None
                    else []
                ),
                "[[nodes.fence]]",
                "# The emulated power strip's outlet for this node (Tasmota HTTP API).",
                'type = "tasmota"',
                f'url = "http://{self.strip_host}:{self.strip_port}"',
                f"channel = {i}",
                "timeout_ms = 2000",
                "",
            ]
        self.config_path.write_text("\n".join(lines))


@dataclass(slots=True)
class NodeState:
    name: str
    id: int
    address: str
    client_port: int
    pid: int | None
    power: str
    """``"on"`` or ``"off"``."""
    exit_code: int | None = None
    """The agent's exit status if it stopped on its own while powered (a crash)."""


@dataclass(slots=True)
class LabState:
    """What the supervisor publishes in ``lab.json`` for the ``lab`` commands."""

    dir: str
    mode: str
    """``"processes"`` or ``"netns"``."""
    supervisor_pid: int
    strip_host: str
    strip_port: int
    multicast_group: str
    multicast_port: int
    replication: str
    nodes: list[NodeState]

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> LabState:
        data: dict[str, Any] = json.loads(path.read_text())
        nodes = [NodeState(**n) for n in data.pop("nodes")]
        return cls(nodes=nodes, **data)

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        names = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node {name!r} in this lab (nodes: {names})")
