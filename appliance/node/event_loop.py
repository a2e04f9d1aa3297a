"""Which asyncio event loop the agent runs on: the standard library's, or uvloop.

The agent is one event loop handling every datagram of the group, every client and every
timer, and on the 2-core lab machine most of a replicated write's latency is the agents'
own CPU per datagram. uvloop (libuv) does the loop's work in C: in the lab it lowered the
sequential write p50 of a 3-node cluster by about a quarter (see docs/performance.md). It is
optional, never a dependency: the stock loop stays the default and works everywhere.

``--event-loop`` on the agent's command line chooses; without it, ``APPLIANCE_EVENT_LOOP`` in
the environment does (so a systemd drop-in or the lab can switch every agent it starts).
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ENV", "EventLoop", "EventLoopError", "choose", "run"]

ENV = "APPLIANCE_EVENT_LOOP"
T = TypeVar("T")


class EventLoop(enum.Enum):
    ASYNCIO = "asyncio"
    """The standard library's selector event loop."""
    UVLOOP = "uvloop"
    """libuv's, from the optional ``uvloop`` package (``pip install 'appliance[uvloop]'``)."""


class EventLoopError(ValueError):
    """An unknown or unavailable event loop was asked for; the message says how to fix it."""


def choose(flag: str | None, environ: dict[str, str] | None = None) -> EventLoop:
    """The loop ``--event-loop`` (``flag``) or else ``$APPLIANCE_EVENT_LOOP`` names."""
    env = os.environ if environ is None else environ
    text, source = (flag, "--event-loop") if flag is not None else (env.get(ENV), ENV)
    if text is None or text == "":
        return EventLoop.ASYNCIO
    try:
        loop = EventLoop(text.strip().lower())
    except ValueError:
        names = ", ".join(e.value for e in EventLoop)
        raise EventLoopError(f"{source}={text!r}: expected one of {names}") from None
    if loop is EventLoop.UVLOOP and importlib.util.find_spec("uvloop") is None:
        raise EventLoopError(
            f"{source}=uvloop: the uvloop package is not installed "
            "(pip install 'appliance[uvloop]', or use the default asyncio loop)"
        )
    return loop


def run(main: Coroutine[Any, Any, T], loop: EventLoop) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    if loop is EventLoop.UVLOOP:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
