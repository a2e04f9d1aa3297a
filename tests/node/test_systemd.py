"""systemd notifications against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.node.systemd import SystemdNotifier, WatchdogPinger, watchdog_interval


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def watch(self, loop: asyncio.AbstractEventLoop, arrived: asyncio.Event) -> None:
        """Read as messages arrive (as systemd does), so the sender never sees a full queue."""

        def readable() -> None:
            self.drain()
            arrived.set()

        loop.add_reader(self.sock.fileno(), readable)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify"
    if len(os.fsencode(path)) >= 100:  # sun_path is 108 bytes
        pytest.skip("tmp_path too long for an AF_UNIX address")
    fake = FakeSystemd(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    yield fake
    fake.close()


def run(coro: Callable[[], Coroutine[Any, Any, None]], budget: float = 5.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(budget):
            await coro()

    asyncio.run(bounded())


# -- the notifier ------------------------------------------------------------------------------


def test_messages_are_exactly_what_systemd_expects(systemd: FakeSystemd) -> None:
    n = SystemdNotifier()
    enabled = n.enabled
    assert enabled and n.address == str(systemd.sock.getsockname())
    assert n.ready()
    assert n.status("primary · view 3 · members 1,2,3")
    assert n.status("two\nlines")  # a newline would start a new assignment
    assert n.status("view 4 → 5 ✓")  # systemd reads UTF-8 (sdnotify alone sends latin-1)
    assert n.watchdog()
    assert n.stopping()
    assert systemd.drain() == [
        "READY=1",
        "STATUS=primary · view 3 · members 1,2,3",
        "STATUS=two lines",
        "STATUS=view 4 → 5 ✓",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert n.sent == 6 and n.errors == 0
    n.close()
    assert not n.enabled and not n.ready()


def test_abstract_namespace_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"appliance-test-{uuid.uuid4().hex}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind("\0" + name)
    rx.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = SystemdNotifier()
        assert n.ready()
        assert rx.recv(100) == b"READY=1"
        n.close()
    finally:
        rx.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SystemdNotifier()
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
    assert n.errors == 0


def test_unreachable_notify_socket_is_an_error_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with pytest.raises(OSError, match=r"cannot connect to NOTIFY_SOCKET=.*nobody-listens"):
        SystemdNotifier()


def test_send_failures_are_counted_never_raised(systemd: FakeSystemd) -> None:
    n = SystemdNotifier()
    assert n.ready()
    systemd.close()  # systemd went away (or restarted)
    assert not n.watchdog()
    assert not n.status("still running")
    assert n.errors == 2 and isinstance(n.last_error, OSError)


def test_a_full_notify_queue_never_blocks_the_caller(systemd: FakeSystemd) -> None:
    n = SystemdNotifier()
    results = [n.watchdog() for _ in range(2000)]  # nobody reads: the queue fills up
    assert results[0] and not results[-1]
    assert n.errors > 0 and isinstance(n.last_error, BlockingIOError)
    assert systemd.drain()[:1] == ["WATCHDOG=1"]


# -- the interval ------------------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) == pytest.approx(0.1)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    for bad in ("", "0", "-5", "ten", "1.5"):
        assert watchdog_interval({"WATCHDOG_USEC": bad}) is None, bad
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}) is None
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.setenv("WATCHDOG_PID", me)
    assert watchdog_interval() == 4.0


# -- the pinger --------------------------------------------------------------------------------


def test_pinger_cadence_from_watchdog_usec(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        systemd.watch(loop, arrived)
        notifier = SystemdNotifier()
        pinger = WatchdogPinger.from_environment(notifier)
        assert pinger is not None and pinger.interval == pytest.approx(0.1)
        pinger.start()
        started = pinger.running
        assert started
        await asyncio.sleep(1.05)  # the run whose pings we count: t = 0, 0.1, ..., 1.0
        pinger.stop()
        assert not pinger.running
        # the reader runs on the same loop: collect whatever is still queued
        systemd.drain()
        loop.remove_reader(systemd.sock.fileno())
        pings = systemd.messages
        assert set(pings) == {"WATCHDOG=1"}
        assert 9 <= len(pings) <= 12, len(pings)
        assert pinger.pings == len(pings) and pinger.skipped == 0
        count = len(pings)
        await asyncio.sleep(0.25)  # stopped means stopped
        assert systemd.drain() == pings and len(pings) == count

    run(main)


def test_no_pinger_without_a_watchdog(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        n = SystemdNotifier()
        assert WatchdogPinger.from_environment(n) is None
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
        assert WatchdogPinger.from_environment(n) is None
        with pytest.raises(ValueError, match="positive"):
            WatchdogPinger(n, 0.0)

    run(main)


def test_unhealthy_agent_gets_no_pings(systemd: FakeSystemd) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        systemd.watch(loop, arrived)
        state = {"healthy": True}
        pinger = WatchdogPinger(SystemdNotifier(), 0.05, lambda: state["healthy"])
        pinger.start()
        while len(systemd.messages) < 3:
            arrived.clear()
            await arrived.wait()
        state["healthy"] = False
        withheld_at = len(systemd.drain())
        skipped0 = pinger.skipped
        await asyncio.sleep(0.5)  # ten ping slots with the agent unhealthy
        assert len(systemd.drain()) == withheld_at
        assert pinger.skipped - skipped0 >= 8 and pinger.running
        # a health check that raises counts as unhealthy too
        pinger.healthy = lambda: 1 / 0 > 0
        await asyncio.sleep(0.15)
        assert len(systemd.drain()) == withheld_at
        # recovery resumes the pings
        state["healthy"] = True
        pinger.healthy = lambda: state["healthy"]
        while len(systemd.messages) <= withheld_at:
            arrived.clear()
            await arrived.wait()
        pinger.stop()
        assert set(systemd.drain()) == {"WATCHDOG=1"}

    run(main)


def test_pinger_does_not_burst_after_a_stall(systemd: FakeSystemd) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pinger = WatchdogPinger(SystemdNotifier(), 0.05)
        pinger.start()
        while not systemd.drain():  # pinging while the loop runs
            await asyncio.sleep(0.01)
        sent = len(systemd.drain())
        time.sleep(0.3)  # the loop is stuck: six ping slots pass
        # Not one ping while the loop stood still (pings come from the loop, no side thread),
        # so systemd's watchdog sees exactly what a hung agent looks like.
        assert len(systemd.drain()) == sent
        before = pinger.pings
        await asyncio.sleep(0.06)
        assert pinger.pings - before <= 2
        pinger.stop()
        assert loop.is_running()

    run(main)
