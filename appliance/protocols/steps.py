"""Work done in bounded steps, so that a host can interleave it with its other work.

A stepped computation is a generator: each ``next()`` does a bounded slice of the work and
the last one raises ``StopIteration`` carrying the result. A host with an event loop runs one
step per loop iteration (a joiner's snapshot restored, a primary's encoded) and keeps serving
datagrams, clients and timers in between; a caller with nothing else to do (a forked child, a
one-call API) drains it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

__all__ = ["Steps", "drain"]

T = TypeVar("T")

Steps = Generator[None, None, T]


def drain(steps: Steps[T]) -> T:
    """Run the steps to their result at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
