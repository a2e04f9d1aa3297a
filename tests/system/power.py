"""A Tasmota power strip on the host side of the bridge whose outlets are the nodes' power.

The agents fence through it with their ordinary ``tasmota`` device (one ``channel`` per node):
``Power<N> Off`` SIGKILLs node N's container init (:meth:`Node.power_off`, a real power pull)
and answers once it is dead; ``Power<N> On`` boots the node again, as a Pi boots when power
returns; ``Power<N>`` reports. Replies are Tasmota's (``{"POWER2":"OFF"}``), unknown commands
get ``{"Command":"Unknown"}``, as the lab's strip (appliance/lab/power_strip.py) answers.
Every switch is recorded, so the test can tell who fenced whom.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

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
        strip = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/cm":
                    self._reply(404, {"error": f"no such path {url.path}"})
                    return
                self._reply(200, strip.command(parse_qs(url.query).get("cmnd", [""])[0]))

            def _reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
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
        word, _, arg = cmnd.strip().partition(" ")
        digits = word.lower().removeprefix("power")
        if word.lower() == digits or not digits.isdigit():
            return {"Command": "Unknown"}
        index = int(digits)
        if not 1 <= index <= len(self.nodes):
            return {"Command": "Unknown"}
        action = arg.strip().lower()
        if action in ("off", "0"):
            self.switch(index, False)
        elif action in ("on", "1"):
            self.switch(index, True)
        elif action:
            return {"Command": "Unknown"}
        return {f"POWER{index}": "ON" if self.nodes[index - 1].powered else "OFF"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
