"""The status LED on gpiozero's MockFactory, blinked by a real event loop."""

from __future__ import annotations

import asyncio
import time

from gpiozero.pins.mock import MockFactory

from appliance.hw.leds import LedPattern, StatusLed, pattern_for
from appliance.protocols.messages import Role
from tests.hw.support import until


def test_roles_map_to_patterns() -> None:
    assert pattern_for(Role.PRIMARY) is LedPattern.SOLID
    assert pattern_for(Role.BACKUP) is LedPattern.SLOW_BLINK
    for role in (Role.JOINING, Role.LEARNING, Role.CANDIDATE):
        assert pattern_for(role) is LedPattern.FAST_BLINK
    assert pattern_for(None) is LedPattern.OFF


def test_solid_off_and_blinking_from_the_loop(factory: MockFactory) -> None:
    async def main() -> None:
        fast = StatusLed(24, pin_factory=factory)
        slow = StatusLed(25, pin_factory=factory)
        assert not fast.lit and fast.pattern is LedPattern.OFF
        fast.show_role(Role.PRIMARY)
        assert fast.lit
        pin, slow_pin = factory.pin(24), factory.pin(25)
        pin.clear_states()
        fast.show_role(Role.JOINING)
        slow.show_role(Role.BACKUP)
        assert slow.lit
        slow_pin.clear_states()
        await until(lambda: len(pin.states) >= 4)  # three changes: at least 0.3 s
        assert slow.lit and len(slow_pin.states) == 1, "a slow blink holds for a second"
        intervals = [s.timestamp for s in pin.states[2:]]
        assert min(intervals) >= 0.09
        fast.show_role(Role.JOINING)  # the same pattern again keeps blinking, not restarting
        n = len(pin.states)
        await until(lambda: len(pin.states) >= n + 2)
        fast.show_role(None)
        assert not fast.lit
        n = len(pin.states)
        await asyncio.sleep(0.25)  # OFF must have cancelled the blinking
        assert len(pin.states) == n
        fast.close()
        slow.close()
        assert not slow_pin.state

    asyncio.run(main())


def test_a_hung_loop_freezes_the_led(factory: MockFactory) -> None:
    async def main() -> None:
        led = StatusLed(24, pin_factory=factory)
        pin = factory.pin(24)
        led.show(LedPattern.FAST_BLINK)
        await until(lambda: len(pin.states) >= 3)
        time.sleep(0.35)  # hung: no gpiozero thread keeps blinking behind the agent's back
        n = len(pin.states)
        await until(lambda: len(pin.states) >= n + 2)
        assert max(s.timestamp for s in pin.states[1:]) >= 0.34
        led.close()

    asyncio.run(main())
