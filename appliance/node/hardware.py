"""The agent's hardware: heartbeat wires, status LED and fencing, wired to the protocol engine.

Built from the node's configuration when the agent starts (``appliance/hw/`` holds the devices;
this module only connects them): a peer's wire verdict goes to ``engine.wire_observed``; the
heartbeat output toggles from the event loop while the engine driver is healthy; the LED
follows the role; every fence (the protocol's, and the control channel's) goes through one
:class:`Fencer` with the node's fencing levels, confirm-off, heartbeat-wire proof, power-cycle
and witness check.

Pins come from gpiozero's default factory (lgpio on a Pi), or from the lab's factory whose wires
join processes when the lab started this agent (``APPLIANCE_LAB_WIRES``). A node with no pins
configured touches no GPIO at all, so the agent runs on any machine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from appliance.hw.fencer import Fencer, FenceRecord, HealthCheck
from appliance.hw.heartbeat import HeartbeatOut, WireChange, WireInputs
from appliance.hw.leds import StatusLed
from appliance.hw.power import PowerDevice, PowerDeviceError
from appliance.node.config import ClusterConfig, NodeConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.failure_detector import Health, WireState
from appliance.protocols.messages import Role

__all__ = ["NodeHardware"]

log = logging.getLogger("appliance.agent")


def _pin_factory(me: NodeConfig) -> Any:
    if os.environ.get("APPLIANCE_LAB_WIRES"):
        from appliance.lab.wires import LabPinFactory  # the lab's emulated wires

        return LabPinFactory.from_environment(me)
    return None  # gpiozero's default


class NodeHardware:
    """This node's wires, LED and fencer."""

    def __init__(
        self,
        cfg: ClusterConfig,
        me: NodeConfig,
        engine: NodeEngine,
        poke: Callable[[], None],
        healthy: Callable[[], bool],
        on_record: Callable[[FenceRecord], None] | None = None,
    ) -> None:
        """``on_record``: every fence's final record (the fencer logs each one itself)."""
        self.cfg = cfg
        self.me = me
        self.engine = engine
        self.poke = poke
        ids = {n.name: n.id for n in cfg.nodes}
        self.names = {n.id: n.name for n in cfg.nodes}
        factory = _pin_factory(me)

        def wire_changed(change: WireChange) -> None:
            engine.wire_observed(ids[change.peer], change.state, change.at)
            poke()

        self.wires = WireInputs.for_node(
            me, cfg.timing, on_change=wire_changed, pin_factory=factory
        )
        self.out = HeartbeatOut.for_node(me, cfg.timing, healthy=healthy, pin_factory=factory)
        health = HealthCheck.for_node(me, self._member_wires if self.wires else None)
        self.fencer = Fencer(
            cfg,
            me,
            health=health,
            wire_probe=self.wires.state if self.wires else None,
            on_record=on_record,
            pin_factory=factory,
        )
        self.led = StatusLed(me.status_led_pin) if me.status_led_pin is not None else None

    def _member_wires(self) -> dict[str, WireState]:
        """The wires of the peers that can vouch for this node's health: those still in its
        view and not themselves crashed (silent on the network with a flat wire).

        A node fenced earlier is off, so its flat wire says nothing about this node; nor does
        the wire of a peer that died at the same time as the target. Counting either would leave
        the last survivor of two failures (one after the other, or both at once) unable to
        fence, forever: it could then never commit a write again."""
        assert self.wires is not None
        states = self.wires.states()
        view = self.engine.member.view
        if view is None:
            return states
        members = {self.names[n] for n in view.nodes}
        now = asyncio.get_running_loop().time()
        crashed = {
            self.names[s.node]
            for s in self.engine.suspicions(now)
            if s.health is Health.CRASHED and s.node in self.names
        }
        return {p: s for p, s in states.items() if p in members and p not in crashed}

    def start(self) -> None:
        """Start sampling and toggling (from the loop)."""
        if self.wires is not None:
            self.wires.start()
        if self.out is not None:
            self.out.start()
        self.show_role(self.engine.role)

    def show_role(self, role: Role | None) -> None:
        if self.led is not None:
            self.led.show_role(role)

    def wire_states(self) -> dict[str, str]:
        """Each wired peer's wire as last judged (for status)."""
        if self.wires is None:
            return {}
        return {peer: state.value for peer, state in self.wires.states().items()}

    async def fence(self, target: NodeConfig) -> FenceRecord:
        """The protocol's fence: levels, confirm-off, wire proof, then power-cycle if set."""
        return await self.fencer.fence(target)

    async def power(self, target: NodeConfig, action: str) -> PowerDevice | None:
        """Switch ``target`` "off" or "on" with the first of its devices that does it (the
        control channel's manual fence); None if none could."""
        for dev in self.fencer.devices.get(target.name, ()):
            if await self.power_with(dev, target, action):
                return dev
        return None

    async def power_with(self, dev: PowerDevice, target: NodeConfig, action: str) -> bool:
        try:
            await (dev.on() if action == "on" else dev.off())
        except PowerDeviceError as e:
            log.error("power %s of %s with %s failed: %s", action, target.name, dev.description, e)
            return False
        return True

    async def aclose(self) -> None:
        """At shutdown: LED off, pending power-ons finished, pins released."""
        self.show_role(None)
        await self.fencer.aclose()
        for part in (self.out, self.wires, self.led):
            if part is not None:
                part.close()
