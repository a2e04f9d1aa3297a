"""The lab's supervisor: the power strip with every node plugged in, until ``lab down``.

It writes the lab's cluster file and key, serves the power strip, switches every outlet on,
keeps ``lab.json`` current (pids, power) for the ``lab`` commands, and on SIGTERM or SIGINT
switches everything off and removes ``lab.json``. The agents die with it even if it is killed
outright (their parent-death signal is SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType

from appliance.lab.layout import LabLayout
from appliance.lab.power_strip import PowerStrip

__all__ = ["Supervisor"]

log = logging.getLogger("appliance.lab")


class Supervisor:
    def __init__(self, layout: LabLayout) -> None:
        self.layout = layout
        self.stop = threading.Event()
        self.strip: PowerStrip | None = None

    def start(self) -> PowerStrip:
        """Files, strip and agents up; returns once every outlet is on (not yet formed)."""
        lay = self.layout
        if lay.network is not None:
            lay.network.setup()
        lay.write_files()
        for name in lay.names:  # a fresh lab: no logs or incarnations of an earlier one
            lay.log_path(name).unlink(missing_ok=True)
        strip = self.strip = PowerStrip(lay)
        strip.serve()
        for outlet in strip.outlets:
            strip.switch(outlet, True)
        strip.publish()
        log.info(
            "lab in %s (%s): %d nodes, strip http://%s:%d, multicast %s:%d",
            lay.dir,
            lay.mode,
            lay.nodes,
            lay.strip_host,
            lay.strip_port,
            lay.multicast_group,
            lay.multicast_port,
        )
        return strip

    def watch(self, period: float = 0.5) -> None:
        """Until stopped: publish the state whenever an agent exits on its own (a crash)."""
        assert self.strip is not None
        seen: dict[str, int | None] = {}
        while not self.stop.wait(period):
            for o in self.strip.outlets:
                code = o.state().exit_code
                if code is not None and seen.get(o.name) != code:
                    log.warning("node %s: agent exited with status %d while powered", o.name, code)
                    self.strip.publish()
                seen[o.name] = code

    def shutdown(self) -> None:
        if self.strip is not None:
            self.strip.shutdown()
            self.strip = None
        if self.layout.network is not None:
            self.layout.network.teardown()
        with contextlib.suppress(FileNotFoundError):
            self.layout.state_path.unlink()
        log.info("lab in %s: stopped", self.layout.dir)

    def run(self) -> int:
        """The background supervisor's whole life (``lab up`` without ``--foreground``)."""

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            self.start()
            self.watch()
        finally:
            self.shutdown()
        return 0
