"""A joiner's snapshot encoded in a forked child: the bytes, the capture point, the failures.

Each test forks a real child from a real event loop and reads its pipe: what the parent gets
must be exactly what the child produced, of the state as it was at the fork, whatever the
parent does to the state meanwhile; a child that fails or is cancelled is reported (or not)
and reaped, never left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence

import pytest

from appliance.node.snapshot_child import ForkedSnapshot, Produce, Result, fork_available

pytestmark = pytest.mark.skipif(not fork_available(), reason="needs fork()")

BUDGET = 20.0


def produce_from(state: dict[str, bytes]) -> tuple[Sequence[bytes], bytes]:
    parts = [state[k] for k in sorted(state)]
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return parts, h.digest()


async def outcome(results: asyncio.Queue[Result]) -> Result:
    async with asyncio.timeout(BUDGET):
        return await results.get()


def fork(
    loop: asyncio.AbstractEventLoop, produce: Produce
) -> tuple[ForkedSnapshot, asyncio.Queue[Result]]:
    results: asyncio.Queue[Result] = asyncio.Queue()
    child = ForkedSnapshot(loop, produce, results.put_nowait)
    return child, results


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def reaped(pid: int) -> None:
    async with asyncio.timeout(BUDGET):
        while not gone(pid):
            await asyncio.sleep(0.005)


def test_the_parent_gets_the_childs_state_and_digest_whole() -> None:
    # 12 MB, the size of 100,000 keys: far beyond what a pipe holds at once.
    state = {f"k{i:03d}": os.urandom(1 << 17) for i in range(96)}

    async def main() -> None:
        child, results = fork(asyncio.get_running_loop(), lambda: produce_from(state))
        got = await outcome(results)
        assert not isinstance(got, str), got
        parts, digest = got
        want_parts, want_digest = produce_from(state)
        assert b"".join(parts) == b"".join(want_parts)
        assert digest == want_digest
        await reaped(child.pid)

    asyncio.run(main())


def test_the_state_is_the_one_at_the_fork_not_what_the_parent_did_next() -> None:
    state = {"a": b"1", "b": b"2"}

    async def main() -> None:
        child, results = fork(asyncio.get_running_loop(), lambda: produce_from(state))
        state["a"] = b"changed"  # the parent goes on serving writes at once
        state["c"] = b"3"
        got = await outcome(results)
        assert not isinstance(got, str), got
        assert b"".join(got[0]) == b"12"
        await reaped(child.pid)

    asyncio.run(main())


def test_a_child_that_fails_is_reported_and_reaped() -> None:
    def broken() -> tuple[Sequence[bytes], bytes]:
        raise RuntimeError("encoder bug")

    async def main() -> None:
        child, results = fork(asyncio.get_running_loop(), broken)
        got = await outcome(results)
        assert got == "the child sent no snapshot"
        await reaped(child.pid)

    asyncio.run(main())


def test_a_child_with_nothing_to_send_says_so() -> None:
    async def main() -> None:
        child, results = fork(asyncio.get_running_loop(), lambda: None)
        assert await outcome(results) == "the child sent no snapshot"
        await reaped(child.pid)

    asyncio.run(main())


def test_a_cancelled_child_is_killed_and_its_result_dropped() -> None:
    def slow() -> tuple[Sequence[bytes], bytes]:
        import time

        time.sleep(30)  # the child, never the test: it is killed long before
        return [b"late"], bytes(32)

    async def main() -> None:
        child, results = fork(asyncio.get_running_loop(), slow)
        child.cancel()
        await reaped(child.pid)
        assert results.empty()  # and none can come: the pipe is closed

    asyncio.run(main())
