"""A Tasmota power strip on the host side of the bridge whose outlets are the nodes' power.

The agents fence through it with their ordinary ``tasmota`` device (one ``channel`` per node):
``Power<N> Off`` SIGKILLs node N's container init (:meth:`Node.power_off`, a real power pull)
and answers once it is dead; ``Power<N> On`` boots the node again, as a Pi boots when power
returns; ``Power<N>`` reports. Commands and replies are the lab's strip's
(:func:`appliance.lab.power_strip.tasmota_command`): Tasmota's, ``{"POWER2":"OFF"}``.
Every switch is recorded, so the test can tell who fenced whom.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from appliance.lab.power_strip import tasmota_command, tasmota_handler
from tests.system.nodes import Node


@dataclass(frozen=True)
class Switch:
    at: float
    """time.monotonic() when the outlet had switched."""
    outlet: int
    on: bool


class NodeStrip:
    """The HTTP server; :attr:`url` is what the inventory's fence devices name."""

    def __init__(self, nodes: Sequence[Node], host: str) -> None:
        self.nodes = list(nodes)
        self.switches: list[Switch] = []
        self.server = ThreadingHTTPServer((host, 0), tasmota_handler(self.command))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def switch(self, index: int, on: bool) -> None:
        node = self.nodes[index - 1]
        if on:
            node.power_on()
        else:
            node.power_off()
        self.switches.append(Switch(time.monotonic(), index, on))

    def command(self, cmnd: str) -> dict[str, str]:
        return tasmota_command(
            cmnd, len(self.nodes), lambda i: self.nodes[i - 1].powered, self.switch
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
