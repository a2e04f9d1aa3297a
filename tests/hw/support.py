"""What the hardware tests share: running a coroutine within a budget, polling a condition
against a deadline (never a fixed sleep), and a device's status across an off/on cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from appliance.hw.power import PowerDevice, PowerState

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], budget: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, budget)

    return asyncio.run(bounded())


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def status_cycle(dev: PowerDevice) -> list[PowerState]:
    """status, off, status, on, status: the three statuses."""
    seen = [await dev.status()]
    await dev.off()
    seen.append(await dev.status())
    await dev.on()
    seen.append(await dev.status())
    return seen
