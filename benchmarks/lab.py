"""The appliance under test: a lab (``appliance lab up``) in a directory of its own.

The lab derives its ports and multicast group from its directory, so every lab here gets a
fresh temporary one and never hears another. ``up`` and ``down`` go through the command line, as
a user runs them; the power strip is switched through its HTTP API directly, so the benchmark
knows when the plug was pulled to the millisecond (the command line adds an interpreter start).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from appliance.lab.cli import run_lab, running_state, snapshot, switch_outlet
from appliance.lab.layout import LabState
from appliance.node.event_loop import ENV

__all__ = ["Lab"]


class Lab:
    def __init__(
        self, workdir: Path, nodes: int, replication: str, event_loop: str = "asyncio"
    ) -> None:
        self.nodes = nodes
        self.replication = replication
        self.event_loop = event_loop
        """The agents' loop (``APPLIANCE_EVENT_LOOP``, inherited through the lab)."""
        self.dir = Path(tempfile.mkdtemp(prefix=f"lab-{nodes}-{replication}-", dir=workdir))
        self._cli("up", "--nodes", str(nodes), "--replication", replication)

    def _cli(self, *args: str) -> None:
        run_lab(self.dir, *args, timeout=120, env={**os.environ, ENV: self.event_loop})

    @property
    def state(self) -> LabState:
        return running_state(self.dir)

    def port(self, name: str) -> int:
        return self.state.node(name).client_port

    def pid(self, name: str) -> int:
        pid = self.state.node(name).pid
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    def agent_pids(self) -> list[int]:
        return [n.pid for n in self.state.nodes if n.pid is not None]

    def status(self) -> tuple[str | None, bool]:
        """(primary, formed): formed once every node is powered and in the primary's view.

        Both come from one reading of the lab's state: a node switched back on between two
        readings would otherwise count as in the view before it has even booted.
        """
        state = self.state
        snap = snapshot(state)
        every_node_on = all(n.power == "on" for n in state.nodes)
        return snap["primary"], bool(snap["formed"]) and every_node_on

    def wait_formed(self, timeout: float = 60.0) -> str:
        """The primary, once every node (power-cycled ones included) is back in its view."""
        deadline = time.monotonic() + timeout
        while True:
            primary, formed = self.status()
            if formed and primary is not None:
                return primary
            if time.monotonic() > deadline:
                raise TimeoutError(f"the lab in {self.dir} did not form again in {timeout:.0f} s")
            time.sleep(0.05)

    def pull_power(self, name: str) -> float:
        """Pull the node's plug; the wall-clock time just before the strip was told."""
        state = self.state
        t = time.time()
        switch_outlet(state, name, False)
        return t

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def close(self) -> None:
        if os.path.exists(self.dir / "lab.json"):
            self._cli("down")
