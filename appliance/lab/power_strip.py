"""The lab's emulated power strip: one outlet per node, driven through Tasmota's HTTP API.

An outlet *is* a node's power: switching it off SIGKILLs the node's whole process group (no
shutdown, no goodbye: a pulled plug) and answers only once the process is gone, as a plug that
confirms it is off; switching it on starts the agent again, as a Pi boots when power returns.
The agents fence through this API, so fencing in the lab takes the same path as with a real
Tasmota power strip.

The API is the subset fence devices use, with Tasmota's replies:

* ``GET /cm?cmnd=Power1`` -> ``{"POWER1":"ON"}`` (``Power`` alone means outlet 1 and answers
  ``{"POWER":"ON"}``, as a single-relay plug does);
* ``GET /cm?cmnd=Power1%20Off`` / ``Power1%20On`` / ``Power1%20Toggle`` (also ``0``/``1``/``2``);
* unknown commands -> ``{"Command":"Unknown"}``.

``GET /lab/state`` returns the supervisor's view (the same JSON as ``lab.json``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final
from urllib.parse import parse_qs, urlsplit

from appliance.lab.layout import LabLayout, LabState, NodeState

__all__ = ["Outlet", "PowerStrip", "send_json", "tasmota_command", "tasmota_handler"]

log = logging.getLogger("appliance.lab")

_PR_SET_PDEATHSIG: Final = 1
_OFF_WORDS: Final = {"off", "0", "false"}
_ON_WORDS: Final = {"on", "1", "true"}
_TOGGLE_WORDS: Final = {"toggle", "2"}


_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child between fork and exec: SIGKILL it when the lab's power thread dies.

    Only a foreign call, no Python-level locks, so it is safe in a multithreaded parent. The
    kernel ties the signal to the *thread* that forked, which is why every outlet switches on
    the one long-lived power thread (:attr:`PowerStrip.power`).
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: object,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer ``handler``'s request with ``body`` as JSON, as the plug APIs all reply."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def tasmota_command(
    cmnd: str,
    outlets: int,
    powered: Callable[[int], bool],
    switch: Callable[[int, bool], None],
) -> dict[str, str]:
    """Run one Tasmota ``cmnd`` on a strip of ``outlets`` outlets and return its JSON reply.

    ``powered(n)`` says whether outlet ``n`` (from 1) is on; ``switch(n, on)`` switches it and
    returns once it has (the reply reports the state after the switch, as Tasmota does).
    """
    word, _, arg = cmnd.strip().partition(" ")
    lower = word.lower()
    if not lower.startswith("power"):
        return {"Command": "Unknown"}
    index_text = lower[len("power") :]
    if index_text and not index_text.isdigit():
        return {"Command": "Unknown"}
    index = int(index_text) if index_text else 1
    if not 1 <= index <= outlets:
        return {"Command": "Unknown"}
    action = arg.strip().lower()
    if action in _OFF_WORDS or (action in _TOGGLE_WORDS and powered(index)):
        switch(index, False)
    elif action in _ON_WORDS or action in _TOGGLE_WORDS:
        switch(index, True)
    elif action:
        return {"Command": "Unknown"}
    key = "POWER" if not index_text else f"POWER{index}"
    return {key: "ON" if powered(index) else "OFF"}


def tasmota_handler(
    command: Callable[[str], dict[str, str]],
    views: Mapping[str, Callable[[], object]] | None = None,
) -> type[BaseHTTPRequestHandler]:
    """An HTTP handler answering ``GET /cm?cmnd=...`` through ``command``, as a Tasmota strip.

    ``views`` adds read-only paths: ``GET <path>`` answers the JSON of ``views[path]()``.
    Any other path is a 404 with a JSON error.
    """
    extra = dict(views or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/cm":
                send_json(self, 200, command(parse_qs(url.query).get("cmnd", [""])[0]))
            elif url.path in extra:
                send_json(self, 200, extra[url.path]())
            else:
                send_json(self, 404, {"error": f"no such path {url.path}"})

        def log_message(self, format: str, *args: object) -> None:
            log.debug("strip: " + format, *args)

    return Handler


class Outlet:
    """One node's power: its agent process while on."""

    def __init__(self, layout: LabLayout, name: str, node_id: int, on_change: Callable[[], None]):
        self.layout = layout
        self.name = name
        self.id = node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.on_change = on_change

    @property
    def powered(self) -> bool:
        return self.proc is not None

    def state(self) -> NodeState:
        proc = self.proc
        exit_code = proc.poll() if proc is not None else None
        return NodeState(
            self.name,
            self.id,
            self.layout.address(self.name),
            self.layout.client_port(self.name),
            proc.pid if proc is not None else None,
            "on" if proc is not None else "off",
            exit_code,
        )

    def on(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.proc = None
            net = self.layout.network
            argv = [
                *(net.exec_prefix(self.name) if net is not None else []),
                sys.executable,
                "-m",
                "appliance",
                "agent",
                "--config",
                str(self.layout.config_path),
                "--node",
                self.name,
                "--state-dir",
                str(self.layout.dir / "state"),
                "--log-level",
                "INFO",
            ]
            env = {**os.environ, "APPLIANCE_LAB_WIRES": str(self.layout.wires_dir)}
            with open(self.layout.log_path(self.name), "ab") as out:
                self.proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: the plug takes them all
                    preexec_fn=_die_with_parent,
                    close_fds=True,
                )
            log.info("outlet %s on: agent pid %d", self.name, self.proc.pid)
        self.on_change()

    def off(self) -> None:
        with self.lock:
            proc, self.proc = self.proc, None
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.info("outlet %s off: agent pid %d killed", self.name, proc.pid)
        self.on_change()


class PowerStrip:
    """The outlets and their HTTP server."""

    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self.state_lock = threading.Lock()
        self.outlets = [
            Outlet(layout, name, i, self.publish) for i, name in enumerate(layout.names, 1)
        ]
        address = (layout.strip_host, layout.strip_port)
        handler = tasmota_handler(self.command, {"/lab/state": lambda: asdict(self.lab_state())})
        self.server = ThreadingHTTPServer(address, handler)
        self.server.daemon_threads = True
        self.power = ThreadPoolExecutor(max_workers=1, thread_name_prefix="power")
        """Every outlet switches here: one thread that lives as long as the strip."""

    def switch(self, outlet: Outlet, on: bool) -> None:
        """Switch ``outlet`` on the power thread and wait until done (confirmed)."""
        self.power.submit(outlet.on if on else outlet.off).result()

    def lab_state(self) -> LabState:
        lay = self.layout
        return LabState(
            str(lay.dir),
            lay.mode,
            os.getpid(),
            lay.strip_host,
            lay.strip_port,
            lay.multicast_group,
            lay.multicast_port,
            lay.replication.value,
            [o.state() for o in self.outlets],
        )

    def publish(self) -> None:
        with self.state_lock:
            self.lab_state().write(self.layout.state_path)

    def command(self, cmnd: str) -> dict[str, str]:
        """Run one Tasmota ``cmnd`` and return its JSON reply."""
        return tasmota_command(
            cmnd,
            len(self.outlets),
            lambda i: self.outlets[i - 1].powered,
            lambda i, on: self.switch(self.outlets[i - 1], on),
        )

    def serve(self) -> threading.Thread:
        t = threading.Thread(target=self.server.serve_forever, name="power-strip", daemon=True)
        t.start()
        return t

    def shutdown(self) -> None:
        """Every outlet off, then the server."""
        self.server.shutdown()
        self.server.server_close()
        for o in self.outlets:
            self.switch(o, False)
        self.power.shutdown()
