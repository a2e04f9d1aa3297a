"""Heartbeat wires on gpiozero's MockFactory: the wire out from a real event loop, the wires in
both sampled by hand on a fake clock (exact) and loop-driven against a connected output pin."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from appliance.hw.heartbeat import HeartbeatOut, WireChange, WireInputs
from appliance.protocols.failure_detector import WireState
from tests.hw.support import until


def gaps(pin: object) -> list[float]:
    """Seconds between consecutive level changes of a MockPin (its first entry is the start)."""
    return [s.timestamp for s in pin.states[1:]]  # type: ignore[attr-defined]


# -- out -----------------------------------------------------------------------------------


def test_wire_out_toggles_from_the_loop(factory: MockFactory) -> None:
    async def main() -> None:
        out = HeartbeatOut(17, 0.01, pin_factory=factory)
        pin = factory.pin(17)
        pin.clear_states()
        out.start()
        await until(lambda: out.toggles >= 20)
        out.close()
        levels = [s.state for s in pin.states]
        assert all(a != b for a, b in itertools.pairwise(levels))
        intervals = gaps(pin)[1:]
        assert sum(intervals) / len(intervals) >= 0.009  # never faster than asked

    asyncio.run(main())


def test_a_stalled_loop_leaves_the_wire_flat(factory: MockFactory) -> None:
    async def main() -> None:
        out = HeartbeatOut(17, 0.01, pin_factory=factory)
        pin = factory.pin(17)
        out.start()
        await until(lambda: out.toggles >= 5)
        time.sleep(0.2)  # the loop is hung: nothing may toggle meanwhile
        n = out.toggles
        await until(lambda: out.toggles >= n + 5)
        out.close()
        assert max(gaps(pin)) >= 0.19

    asyncio.run(main())


def test_an_unhealthy_agent_holds_the_wire(factory: MockFactory) -> None:
    healthy = True

    async def main() -> None:
        nonlocal healthy
        out = HeartbeatOut(17, 0.005, pin_factory=factory, healthy=lambda: healthy)
        out.start()
        await until(lambda: out.toggles >= 3)
        healthy = False
        level, toggles = out.level, out.toggles
        await until(lambda: out.held >= 10)
        assert (out.level, out.toggles) == (level, toggles)
        healthy = True
        await until(lambda: out.toggles >= toggles + 3)
        out.stop()
        assert not out.running
        out.close()

    asyncio.run(main())


# -- in, sampled by hand -------------------------------------------------------------------


# binary fractions, so that the fake clock's sums are exact
TICK = 1 / 256
TOGGLE = 2 * TICK
FLAT_AFTER = 8 * TICK


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def wires(
    factory: MockFactory, changes: list[WireChange] | None = None, **kw: float
) -> tuple[WireInputs, Clock]:
    clock = Clock()
    w = WireInputs(
        {"pi2": 27, "pi3": 22},
        toggle=kw.get("toggle", TOGGLE),
        flat_after=kw.get("flat_after", FLAT_AFTER),
        pin_factory=factory,
        clock=clock,
        on_change=None if changes is None else changes.append,
    )
    return w, clock


def test_wire_verdicts_unknown_alive_flat(factory: MockFactory) -> None:
    changes: list[WireChange] = []
    w, clock = wires(factory, changes)
    pi2 = factory.pin(27)
    assert w.states() == {"pi2": WireState.UNKNOWN, "pi3": WireState.UNKNOWN}
    assert w.state("nobody") is WireState.UNKNOWN
    for _ in range(10):  # pi2 toggles every TOGGLE, sampled every TICK; pi3's wire is dead
        clock.t += TICK
        if pi2.state:
            pi2.drive_low()
        else:
            pi2.drive_high()
        w.sample()
        clock.t += TICK
        w.sample()
    assert w.state("pi2") is WireState.ALIVE
    assert w.transitions("pi2") == 10
    assert w.state("pi3") is WireState.FLAT
    assert [(c.peer, c.state) for c in changes] == [
        ("pi2", WireState.ALIVE),
        ("pi3", WireState.FLAT),
    ]
    assert changes[1].at == 100 + FLAT_AFTER  # exactly flat_after without a change
    # pi2 stops: flat once flat_after has passed since its last change, not before
    last = clock.t - TICK
    while clock.t < last + FLAT_AFTER:
        assert w.state("pi2") is WireState.ALIVE
        clock.t += TICK
        w.sample()
    assert w.state("pi2") is WireState.FLAT
    # and alive again on its next change
    pi2.drive_high() if not pi2.state else pi2.drive_low()
    clock.t += TICK
    assert [c.state for c in w.sample()] == [WireState.ALIVE]
    w.close()


def test_own_stall_is_not_held_against_the_wire(factory: MockFactory) -> None:
    w, clock = wires(factory)
    pi2 = factory.pin(27)
    pi2.drive_high()
    clock.t += TICK
    w.sample()
    assert w.state("pi2") is WireState.ALIVE
    clock.t += 1.0  # this node's loop stood still for a second
    assert w.sample() == []
    assert w.stalls == 1
    assert w.state("pi2") is WireState.ALIVE
    for _ in range(7):  # but a wire that stays still after we woke up is flat in due time
        clock.t += TICK
        w.sample()
    assert w.state("pi2") is WireState.ALIVE
    clock.t += TICK
    w.sample()
    assert w.state("pi2") is WireState.FLAT
    w.close()


def test_wire_inputs_check_their_timing(factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="twice the toggle"):
        WireInputs({"pi2": 27}, toggle=0.01, flat_after=0.02, pin_factory=factory)
    with pytest.raises(ValueError, match="sample_every"):
        WireInputs(
            {"pi2": 27}, toggle=0.01, flat_after=0.05, sample_every=0.01, pin_factory=factory
        )


# -- out to in, both on the loop -----------------------------------------------------------


def test_a_connected_wire_goes_alive_then_flat_when_the_sender_stops(
    factory: MockFactory,
) -> None:
    inp = factory.pin(27)
    factory.pin(17, pin_class=MockConnectedPin, input_pin=inp)

    async def main() -> None:
        changes: list[WireChange] = []
        w = WireInputs(
            {"pi2": 27}, toggle=0.01, flat_after=0.05, pin_factory=factory, on_change=changes.append
        )
        out = HeartbeatOut(17, 0.01, pin_factory=factory)
        w.start()
        out.start()
        await until(lambda: w.state("pi2") is WireState.ALIVE)
        await until(lambda: w.transitions("pi2") >= 10)
        assert w.state("pi2") is WireState.ALIVE
        out.stop()
        stopped = asyncio.get_running_loop().time()
        await until(lambda: w.state("pi2") is WireState.FLAT)
        assert changes[-1].state is WireState.FLAT
        assert changes[-1].at > stopped  # (the exact timing is checked on a fake clock above)
        w.close()
        out.close()

    asyncio.run(main())


def test_built_from_the_node_configuration(factory: MockFactory) -> None:
    from appliance.node.config import loads_config

    cfg = loads_config(
        """
[cluster]
name = "hw"
[timing]
wire_toggle_ms = 10
flat_wire_timeout_ms = 40
[[nodes]]
name = "a"
id = 1
address = "127.0.0.1"
client_port = 7001
heartbeat_out_pin = 17
heartbeat_in = { b = 27 }
fence = [{ type = "command", argv = ["/bin/true"] }]
[[nodes]]
name = "b"
id = 2
address = "127.0.0.1"
client_port = 7002
heartbeat_out_pin = 17
fence = [{ type = "command", argv = ["/bin/true"] }]
"""
    )
    a, b = cfg.node("a"), cfg.node("b")
    out = HeartbeatOut.for_node(a, cfg.timing, pin_factory=factory)
    assert out is not None and out.pin == 17 and out.toggle == 0.01
    w = WireInputs.for_node(a, cfg.timing, pin_factory=factory)
    assert w is not None and w.peers == ("b",) and w.flat_after == 0.04
    assert w.sample_every == 0.005
    assert HeartbeatOut.for_node(dataclasses.replace(b, heartbeat_out_pin=None), cfg.timing) is None
    assert WireInputs.for_node(b, cfg.timing) is None
    out.close()
    w.close()
