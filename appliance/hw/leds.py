"""The status LED: what this node is doing, readable from across the room.

* solid: primary;
* slow blink (1 s on, 1 s off): backup;
* fast blink (0.1 s on, 0.1 s off): joining, learning or recovering (candidate);
* off: the agent is not running (or has not started).

The blinking is a chain of event-loop callbacks on a plain gpiozero ``LED``, never gpiozero's
``blink()`` (which runs a background thread): a hung agent freezes its LED, so a blinking LED
that stopped blinking says "hung", just as the heartbeat wire does to the neighbours.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from gpiozero import LED

from appliance.protocols.messages import Role

__all__ = ["LedPattern", "StatusLed", "pattern_for"]


class LedPattern(enum.Enum):
    """A pattern and its (on, off) seconds; ``None`` means it does not blink."""

    OFF = ("off", None)
    SOLID = ("solid", None)
    SLOW_BLINK = ("slow-blink", (1.0, 1.0))
    FAST_BLINK = ("fast-blink", (0.1, 0.1))

    @property
    def times(self) -> tuple[float, float] | None:
        times: tuple[float, float] | None = self.value[1]
        return times


def pattern_for(role: Role | None) -> LedPattern:
    """The pattern that shows ``role`` (None: the agent is down or stopping)."""
    if role is None:
        return LedPattern.OFF
    if role is Role.PRIMARY:
        return LedPattern.SOLID
    if role is Role.BACKUP:
        return LedPattern.SLOW_BLINK
    return LedPattern.FAST_BLINK  # JOINING, LEARNING, CANDIDATE


class StatusLed:
    """A gpiozero ``LED`` showing a :class:`LedPattern`, blinked from the event loop."""

    def __init__(
        self,
        pin: int,
        *,
        pin_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._led = LED(pin, initial_value=False, pin_factory=pin_factory)
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self.pattern = LedPattern.OFF

    @property
    def lit(self) -> bool:
        return bool(self._led.is_lit)

    def show_role(self, role: Role | None) -> None:
        """Show ``role`` (call on every role change; a repeated role changes nothing)."""
        self.show(pattern_for(role))

    def show(self, pattern: LedPattern) -> None:
        """Switch to ``pattern`` (from the loop's thread); the same pattern keeps its phase."""
        if pattern is self.pattern:
            return
        self._cancel()
        self.pattern = pattern
        if pattern.times is None:
            self._led.value = pattern is LedPattern.SOLID
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._set(True)

    def close(self) -> None:
        """Turn the LED off and release the pin."""
        self._cancel()
        self.pattern = LedPattern.OFF
        self._led.off()
        self._led.close()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _set(self, lit: bool) -> None:
        times = self.pattern.times
        assert times is not None and self._loop is not None
        self._led.value = lit
        self._handle = self._loop.call_later(times[0] if lit else times[1], self._set, not lit)
