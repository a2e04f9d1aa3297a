"""GPIO heartbeat wires: this node's wire out, and its neighbours' wires in.

Each node toggles an output pin from its agent's event loop; neighbours read it on an input
pin. A flat wire plus network silence means the node crashed (fail over fast); a live wire with
network silence means it is partitioned (fence before promoting); after a fence, the wire going
flat is physical proof that the power really went off.

**Out** (:class:`HeartbeatOut`): one ``loop.call_later`` chain flips the pin every
``wire_toggle`` seconds. A stalled or hung loop stops the chain, so the wire goes flat exactly
when the agent cannot act; an optional ``healthy()`` callable holds the level while the agent
considers itself sick (the same judgement that withholds the systemd watchdog ping).

**In** (:class:`WireInputs`): the pins are *polled* from the event loop, every half
``wire_toggle`` by default, and a wire is FLAT once no level change was seen for ``flat_after``
seconds. Polling rather than gpiozero edge callbacks because:

* edge callbacks run on the pin factory's thread (lgpio's notify thread) and would have to be
  marshalled onto the loop with ``call_soon_threadsafe`` anyway; at 100 edges per second per
  peer that is as many wake-ups as polling, plus a thread that keeps running when the loop
  hangs (and counts edges nobody acts on);
* a poll every half toggle period sees every level, so it misses no change of a healthy wire,
  and a verdict only matters at the loop's own pace, when the protocol reads it;
* the loop's stalls are visible: when two polls are further apart than ``flat_after / 2``, this
  node was not watching, so the gap is not held against the wire (it restarts its window),
  just as the failure detector forgives network silence slept through;
* it is deterministic under gpiozero's ``MockFactory`` and the lab's pin factory.

Each read is one ``gpio_read`` ioctl through lgpio: two peers polled every 5 ms cost about 400
system calls a second, nothing on a Pi. The inputs use the pull-down, so an unplugged wire reads
low: FLAT, never ALIVE.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpiozero import InputDevice, OutputDevice

from appliance.node.config import NodeConfig, TimingConfig
from appliance.protocols.failure_detector import WireState

__all__ = ["HeartbeatOut", "WireChange", "WireInputs"]

log = logging.getLogger(__name__)


class HeartbeatOut:
    """Toggles this node's heartbeat pin every ``toggle`` seconds from the event loop."""

    def __init__(
        self,
        pin: int,
        toggle: float,
        *,
        pin_factory: Any = None,
        healthy: Callable[[], bool] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not toggle > 0:
            raise ValueError(f"wire toggle period must be positive, got {toggle!r}")
        self.pin = pin
        self.toggle = toggle
        self.healthy = healthy
        self._loop = loop
        self._dev = OutputDevice(pin, initial_value=False, pin_factory=pin_factory)
        self._handle: asyncio.TimerHandle | None = None
        self._holding = False
        self.toggles = 0
        self.held = 0
        """Ticks on which the level was held because ``healthy()`` said no."""

    @classmethod
    def for_node(cls, node: NodeConfig, timing: TimingConfig, **kw: Any) -> HeartbeatOut | None:
        """``node``'s wire at ``timing.wire_toggle``, or None if it has no heartbeat pin."""
        if node.heartbeat_out_pin is None:
            return None
        return cls(node.heartbeat_out_pin, timing.wire_toggle, **kw)

    @property
    def running(self) -> bool:
        return self._handle is not None

    @property
    def level(self) -> bool:
        return bool(self._dev.value)

    def start(self) -> None:
        """Start toggling (from the loop's thread). Idempotent."""
        if self._handle is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.tick()

    def stop(self) -> None:
        """Stop toggling; the pin keeps its level (the wire goes flat)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.stop()
        self._dev.close()

    def tick(self) -> None:
        """One step: flip the pin (unless unhealthy) and schedule the next step."""
        ok = True
        if self.healthy is not None:
            try:
                ok = bool(self.healthy())
            except Exception:
                log.exception("heartbeat health check raised; holding the wire")
                ok = False
        if ok:
            if self._holding:
                log.warning("healthy again: heartbeat wire toggling")
                self._holding = False
            self._dev.toggle()
            self.toggles += 1
        else:
            if not self._holding:
                log.warning("unhealthy: holding the heartbeat wire flat")
                self._holding = True
            self.held += 1
        assert self._loop is not None
        self._handle = self._loop.call_later(self.toggle, self.tick)


@dataclass(frozen=True, slots=True)
class WireChange:
    """A peer's wire changed verdict (the call to make: ``engine.wire_observed``)."""

    peer: str
    state: WireState
    at: float


class _Wire:
    __slots__ = ("dev", "level", "since", "state", "transitions")

    def __init__(self, dev: Any, level: bool, now: float) -> None:
        self.dev = dev
        self.level = level
        self.since = now
        """Start of the current window: the last level change, or the last forgiven stall."""
        self.state = WireState.UNKNOWN
        self.transitions = 0


class WireInputs:
    """Watches each peer's heartbeat wire on its input pin and reports ALIVE / FLAT / UNKNOWN.

    A wire starts UNKNOWN; its first level change makes it ALIVE, and ``flat_after`` seconds
    without one (of this node watching) make it FLAT. ``on_change(change)`` is called on the
    loop for every new verdict.
    """

    def __init__(
        self,
        pins: Mapping[str, int],
        *,
        toggle: float,
        flat_after: float,
        sample_every: float | None = None,
        pin_factory: Any = None,
        on_change: Callable[[WireChange], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``toggle`` is the peers' ``wire_toggle``; ``flat_after`` must exceed twice that (a
        healthy wire changes at least twice in any such window). ``sample_every`` (default half
        of ``toggle``) must be shorter than ``toggle`` so that no level is missed."""
        if not toggle > 0 or not math.isfinite(toggle):
            raise ValueError(f"toggle must be a positive number of seconds, got {toggle!r}")
        if not flat_after > 2 * toggle:
            raise ValueError(
                f"flat_after ({flat_after}) must exceed twice the toggle period ({toggle})"
            )
        period = toggle / 2 if sample_every is None else sample_every
        if not 0 < period < toggle:
            raise ValueError(f"sample_every ({period}) must be positive and below {toggle}")
        self.toggle = toggle
        self.flat_after = flat_after
        self.sample_every = period
        self.on_change = on_change
        self._loop = loop
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._last_sample: float | None = None
        self.stalls = 0
        """Polls that came too late to judge the wire (this node's loop stood still)."""
        self._wires: dict[str, _Wire] = {}
        now = self._now()
        try:
            for peer, pin in pins.items():
                dev = InputDevice(pin, pull_up=False, pin_factory=pin_factory)
                self._wires[peer] = _Wire(dev, bool(dev.value), now)
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_node(cls, node: NodeConfig, timing: TimingConfig, **kw: Any) -> WireInputs | None:
        """``node``'s ``heartbeat_in`` pins, FLAT after ``flat_wire_timeout`` (the config
        guarantees it exceeds twice ``wire_toggle``); None if it has no wires in."""
        if not node.heartbeat_in:
            return None
        return cls(
            node.heartbeat_in, toggle=timing.wire_toggle, flat_after=timing.flat_wire_timeout, **kw
        )

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is not None:
            return self._loop.time()
        return time.monotonic()  # what asyncio's loops use for loop.time()

    # -- reading -----------------------------------------------------------------------------

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._wires)

    def state(self, peer: str) -> WireState:
        """The verdict on ``peer``'s wire; UNKNOWN for a peer without a wire here."""
        wire = self._wires.get(peer)
        return WireState.UNKNOWN if wire is None else wire.state

    def states(self) -> dict[str, WireState]:
        return {peer: w.state for peer, w in self._wires.items()}

    def transitions(self, peer: str) -> int:
        """Level changes seen on ``peer``'s wire since start."""
        return self._wires[peer].transitions

    # -- sampling ----------------------------------------------------------------------------

    def start(self) -> None:
        """Sample now and then every ``sample_every`` seconds, from the loop. Idempotent."""
        if self._handle is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._last_sample = None
        now = self._now()
        for w in self._wires.values():  # count from now, not from construction
            w.since = max(w.since, now)
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.stop()
        for w in self._wires.values():
            w.dev.close()

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:
            log.exception("heartbeat wire sampling failed")
        assert self._loop is not None
        self._handle = self._loop.call_later(self.sample_every, self._tick)

    def sample(self, now: float | None = None) -> list[WireChange]:
        """Read every input once at ``now`` (default: the clock); the verdicts that changed.

        Exposed so a caller (or a test) can drive sampling itself.
        """
        if now is None:
            now = self._now()
        stalled = self._last_sample is not None and now - self._last_sample > self.flat_after / 2
        if stalled:
            self.stalls += 1
        self._last_sample = now
        changes: list[WireChange] = []
        for peer, w in self._wires.items():
            level = bool(w.dev.value)
            new = w.state
            if level != w.level:
                w.level = level
                w.transitions += 1
                w.since = now
                new = WireState.ALIVE
            elif stalled:
                w.since = now  # we were not watching: the gap is no evidence either way
            elif now - w.since >= self.flat_after:
                new = WireState.FLAT
            if new is not w.state:
                w.state = new
                changes.append(WireChange(peer, new, now))
        for change in changes:
            log.info("heartbeat wire of %s: %s", change.peer, change.state.value)
            if self.on_change is not None:
                try:
                    self.on_change(change)
                except Exception:
                    log.exception("wire change callback raised")
        return changes
