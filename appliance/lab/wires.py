"""The lab's heartbeat wires: a gpiozero pin factory whose wires join processes.

Each node's heartbeat output pin writes its level into a one-byte file under the lab
directory (``wires/n1.out``); the input pins the configuration connects to a peer
(``heartbeat_in``) read that peer's file. Everything above the pins is the ordinary hardware
code, so the lab exercises it unchanged: a node whose process is killed or frozen stops writing
and its wire reads flat; a node whose network cable is pulled keeps toggling (partitioned, not
crashed).

The agent uses this factory when ``APPLIANCE_LAB_WIRES`` names the wires directory (the lab's
supervisor sets it); on a Pi it is unset and gpiozero's default factory (lgpio) drives real pins.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final

from gpiozero.pins.mock import MockFactory, MockPin

from appliance.node.config import NodeConfig

__all__ = ["ENV", "LabPinFactory", "wire_file", "wire_live"]

ENV: Final = "APPLIANCE_LAB_WIRES"


def wire_file(wires: Path, node: str) -> Path:
    return wires / f"{node}.out"


def wire_live(wires: Path, node: str, within: float = 0.1) -> bool | None:
    """Whether ``node``'s wire changed level within ``within`` seconds (None: never driven)."""
    try:
        age = time.time() - wire_file(wires, node).stat().st_mtime
    except FileNotFoundError:
        return None
    return age < within


class _LabWirePin(MockPin):  # type: ignore[misc]
    """A mock pin backed by a file: written when it is this node's output, read when wired in."""

    def __init__(self, factory: LabPinFactory, info: Any) -> None:
        number = int(str(info.name).removeprefix("GPIO"))
        self._out: int | None = None
        self._in: Path | None = None
        self._in_fd: int | None = None
        """The peer's wire file, kept open once it exists: the wire is polled every few
        milliseconds, and an open/read/close per poll was a tenth of an idle agent's CPU. The
        peer only ever rewrites its one byte in place, so the open file stays the wire."""
        if number == factory.out_pin:
            path = wire_file(factory.wires, factory.node)
            self._out = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        elif number in factory.inputs:
            self._in = wire_file(factory.wires, factory.inputs[number])
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if self._out is not None and self._function == "output":
            os.pwrite(self._out, b"1" if value else b"0", 0)
        return changed

    def _get_state(self) -> bool:
        if self._in is not None and self._function == "input":
            if self._in_fd is None:
                try:
                    self._in_fd = os.open(self._in, os.O_RDONLY)
                except FileNotFoundError:
                    return False  # never driven: the pull-down holds it low
            return os.pread(self._in_fd, 1, 0) == b"1"
        state: bool = self._state
        return state

    def close(self) -> None:
        super().close()
        for fd in (self._out, self._in_fd):
            if fd is not None:
                os.close(fd)
        self._out = self._in_fd = None


class LabPinFactory(MockFactory):  # type: ignore[misc]
    """Pins for node ``me``: its heartbeat output and the inputs its peers' wires arrive on."""

    def __init__(self, wires: Path, me: NodeConfig) -> None:
        self.wires = wires
        self.node = me.name
        self.out_pin = me.heartbeat_out_pin
        self.inputs = {pin: peer for peer, pin in me.heartbeat_in.items()}
        wires.mkdir(parents=True, exist_ok=True)
        super().__init__(pin_class=_LabWirePin)

    @classmethod
    def from_environment(cls, me: NodeConfig) -> LabPinFactory | None:
        """The lab's factory when the lab started this agent, else None (gpiozero's default)."""
        wires = os.environ.get(ENV)
        return cls(Path(wires), me) if wires else None
