"""The multicast transport and the engine driver, with real sockets on loopback.

Every test uses its own multicast group and a random high port, joins it on 127.0.0.1 and sends
with IP_MULTICAST_IF 127.0.0.1 and TTL 1, so no datagram leaves the host. Waits are on
conditions (signalled by the host callbacks) under asyncio timeouts, never sleep-and-hope.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import netifaces
import pytest

from appliance.node import transport
from appliance.node.transport import (
    EngineDriver,
    MulticastEndpoint,
    open_multicast_socket,
    pick_interface,
)
from appliance.protocols.config import ProtocolConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import (
    Delivered,
    Event,
    FenceRequested,
    RequestsStable,
    SnapshotRequested,
)
from appliance.protocols.messages import Role
from appliance.protocols.wire.header import MessageType

KEY = b"k" * 32
LO = "127.0.0.1"
TEST_BUDGET = 9.0  # every test is bounded well under 10 s


def fresh_group() -> tuple[str, int]:
    rng = random.SystemRandom()
    return f"239.255.77.{rng.randint(1, 254)}", rng.randint(20000, 60999)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_BUDGET):
            await coro()

    asyncio.run(bounded())


def loopback_sender(group: str) -> socket.socket:
    """A plain socket that multicasts on loopback only (the default route would be eth0)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LO))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return s


# -- interface selection ---------------------------------------------------------------------


def test_pick_interface_by_name_and_address_on_this_host() -> None:
    assert pick_interface("lo") == ("lo", LO)
    assert pick_interface(" 127.0.0.1 ") == ("lo", LO)
    name, addr = pick_interface("auto")
    assert addr in transport._ipv4_addresses()[name]


class FakeNetifaces:
    AF_INET = netifaces.AF_INET

    def __init__(self, table: dict[str, list[str]], gateway: str | None) -> None:
        self.table = table
        self.gateway = gateway

    def interfaces(self) -> list[str]:
        return list(self.table)

    def ifaddresses(self, name: str) -> dict[int, list[dict[str, str]]]:
        addrs = self.table[name]
        return (
            {self.AF_INET: [{"addr": a, "netmask": "255.255.255.0"} for a in addrs]}
            if addrs
            else {}
        )

    def gateways(self) -> dict[object, object]:
        if self.gateway is None:
            return {"default": {}}
        return {"default": {self.AF_INET: ("10.0.0.1", self.gateway)}}


def fake(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]], gw: str | None) -> None:
    f = FakeNetifaces(table, gw)
    for attr in ("interfaces", "ifaddresses", "gateways"):
        monkeypatch.setattr(netifaces, attr, getattr(f, attr))


def test_auto_prefers_the_default_gateway_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, {"lo": [LO], "wlan0": ["10.0.1.5"], "eth0": ["10.0.0.7"]}, "eth0")
    assert pick_interface("auto") == ("eth0", "10.0.0.7")


def test_auto_without_gateway_takes_first_non_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, {"lo": [LO], "dummy": [], "eth1": ["192.168.7.2"]}, None)
    assert pick_interface("AUTO") == ("eth1", "192.168.7.2")
    # a gateway interface without an IPv4 address is skipped too
    fake(monkeypatch, {"lo": [LO], "ppp0": [], "eth1": ["192.168.7.2"]}, "ppp0")
    assert pick_interface("auto") == ("eth1", "192.168.7.2")


def test_auto_falls_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, {"lo": [LO], "eth0": []}, None)
    assert pick_interface("auto") == ("lo", LO)


def test_unknown_interface_lists_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, {"lo": [LO], "eth0": ["10.0.0.7"], "wlan0": []}, "eth0")
    with pytest.raises(ValueError, match=r"'eth9'.*lo \(127\.0\.0\.1\).*eth0 \(10\.0\.0\.7\)"):
        pick_interface("eth9")
    with pytest.raises(ValueError, match=r"10\.9\.9\.9.*no interface has this IPv4 address"):
        pick_interface("10.9.9.9")
    with pytest.raises(ValueError, match=r"'wlan0' has no IPv4 address"):
        pick_interface("wlan0")
    fake(monkeypatch, {}, None)
    with pytest.raises(ValueError, match="no interface has an IPv4 address"):
        pick_interface("auto")


# -- the socket and the endpoint -------------------------------------------------------------


def test_socket_options() -> None:
    group, port = fresh_group()
    s = open_multicast_socket(group, port, LO, ttl=3, loop=True)
    try:
        assert s.getsockname() == (group, port)  # bound to the group: sees only its traffic
        assert s.getblocking() is False
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4) == socket.inet_aton(LO)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
        # a second node on the same host shares the port
        open_multicast_socket(group, port, LO, loop=False).close()
    finally:
        s.close()


def test_socket_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not a multicast address"):
        open_multicast_socket("10.0.0.1", 5000, LO)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        open_multicast_socket("239.255.77.1", 5000, "lo")
    with pytest.raises(OSError, match=r"cannot join multicast group 239\.255\.77\.1"):
        open_multicast_socket("239.255.77.1", 5000, "10.255.255.254")


def test_endpoints_share_a_group_on_one_host() -> None:
    async def main() -> None:
        group, port = fresh_group()
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        arrived = asyncio.Event()

        def collect(name: str) -> Callable[[bytes, Any], None]:
            def cb(data: bytes, addr: Any) -> None:
                got[name].append(data)
                arrived.set()

            return cb

        a = await MulticastEndpoint.open(group, port, LO, collect("a"))
        b = await MulticastEndpoint.open(group, port, LO, collect("b"))
        # another group on the same port must not leak in (the socket is bound to its group)
        other_group = group.rsplit(".", 1)[0] + (".1" if not group.endswith(".1") else ".2")
        other = await MulticastEndpoint.open(other_group, port, LO)
        try:
            other.send(b"elsewhere")
            a.send(b"one")
            b.send(b"two")
            async with asyncio.timeout(2):
                while not (len(got["a"]) >= 2 and len(got["b"]) >= 2):
                    arrived.clear()
                    await arrived.wait()
            # multicast loopback: each endpoint also hears itself
            assert sorted(got["a"]) == sorted(got["b"]) == [b"one", b"two"]
            assert a.sent == b.sent == 1 and a.errors == b.errors == 0
            assert other.received == 1  # only its own datagram
        finally:
            for e in (a, b, other):
                e.close()
            await asyncio.gather(a.wait_closed(), b.wait_closed(), other.wait_closed())
        assert a.closed
        a.send(b"late")
        assert a.dropped == 1

    run(main)


def test_the_ack_filter_drops_second_acks_in_the_kernel_and_nothing_else() -> None:
    async def main() -> None:
        group, port = fresh_group()
        got: list[int] = []
        arrived = asyncio.Event()

        def cb(data: bytes, addr: Any) -> None:
            got.append(data[1])
            arrived.set()

        rx = await MulticastEndpoint.open(group, port, LO, cb)
        tx = loopback_sender(group)
        try:
            assert rx.filter_second_acks(True) and rx.ack_filter
            for t in (MessageType.DATA, MessageType.SECOND_ACK, MessageType.HEARTBEAT):
                tx.sendto(bytes([1, int(t)]) + bytes(70), (group, port))
            async with asyncio.timeout(2):
                while len(got) < 2:
                    arrived.clear()
                    await arrived.wait()
            assert got == [MessageType.DATA, MessageType.HEARTBEAT]
            assert rx.received == 2  # the confirmation never reached the process
            assert rx.filter_second_acks(False) and not rx.ack_filter
            tx.sendto(bytes([1, int(MessageType.SECOND_ACK)]) + bytes(70), (group, port))
            async with asyncio.timeout(2):
                while len(got) < 3:
                    arrived.clear()
                    await arrived.wait()
            assert got[-1] == MessageType.SECOND_ACK
        finally:
            tx.close()
            rx.close()
            await rx.wait_closed()
        assert not rx.filter_second_acks(True)  # closed: nothing to attach it to

    run(main)


def test_endpoint_survives_a_failing_callback() -> None:
    async def main() -> None:
        group, port = fresh_group()
        seen: list[bytes] = []
        arrived = asyncio.Event()

        def flaky(data: bytes, addr: Any) -> None:
            seen.append(data)
            arrived.set()
            if data == b"boom":
                raise RuntimeError("host bug")

        e = await MulticastEndpoint.open(group, port, LO, flaky)
        try:
            e.send(b"boom")
            e.send(b"fine")
            async with asyncio.timeout(2):
                while len(seen) < 2:
                    arrived.clear()
                    await arrived.wait()
            assert seen == [b"boom", b"fine"] and e.errors == 1
        finally:
            e.close()

    run(main)


# -- engines on real sockets -----------------------------------------------------------------


@dataclass
class Node:
    engine: NodeEngine
    endpoint: MulticastEndpoint
    driver: EngineDriver
    events: list[Event] = field(default_factory=list)
    fences: list[int] = field(default_factory=list)
    trace: list[tuple[str, int]] = field(default_factory=list)
    """What the driver did, in order: ("send", message type) and ("filter", on)."""

    def delivered(self) -> list[bytes]:
        return [ev.payload for ev in self.events if isinstance(ev, Delivered)]

    def stable(self) -> int:
        return max((ev.seq for ev in self.events if isinstance(ev, RequestsStable)), default=0)


class Cluster:
    def __init__(self, cfg: ProtocolConfig, group: str, port: int) -> None:
        self.cfg = cfg
        self.group = group
        self.port = port
        self.nodes: dict[int, Node] = {}
        self.changed = asyncio.Event()
        self.filter_acks = False

    @classmethod
    async def start(cls, nodes: tuple[int, ...] = (1, 2, 3), filter_acks: bool = False) -> Cluster:
        group, port = fresh_group()
        cfg = ProtocolConfig(cluster_id=random.randint(1, 1000), nodes=nodes, key=KEY)
        c = cls(cfg, group, port)
        c.filter_acks = filter_acks
        for n in nodes:
            await c.add(n)
        for node in c.nodes.values():
            node.driver.start()
        return c

    async def add(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        engine = NodeEngine(self.cfg, n, 1, loop.time())
        endpoint = await MulticastEndpoint.open(self.group, self.port, LO)
        node = Node(engine, endpoint, EngineDriver(engine, lambda d: None))
        driver = node.driver

        def send(data: bytes) -> None:
            node.trace.append(("send", data[1]))
            endpoint.send(data)

        def filter_acks(on: bool) -> bool:
            node.trace.append(("filter", int(on)))
            return endpoint.filter_second_acks(on)

        driver._send = send
        if self.filter_acks:
            driver.filter_acks = filter_acks

        def on_event(ev: Event) -> None:
            node.events.append(ev)
            now = loop.time()
            if isinstance(ev, SnapshotRequested):
                engine.provide_snapshot(ev.snapshot_id, b"", now)
                driver.poke()
            elif isinstance(ev, FenceRequested):
                node.fences.append(ev.node)
                engine.fence_result(ev.node, True, now)
                driver.poke()
            self.changed.set()

        def on_datagram(data: bytes, addr: Any) -> None:
            driver.receive(data, addr)
            self.changed.set()

        driver.on_event = on_event
        endpoint.on_datagram = on_datagram
        self.nodes[n] = node

    async def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        async def waiting() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(waiting(), timeout)
        except TimeoutError:
            status = {n: node.engine.status() for n, node in self.nodes.items()}
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}: {status}"
            ) from None

    def formed(self) -> bool:
        roles = sorted(node.engine.role for node in self.nodes.values())
        want = [Role.BACKUP] * (len(self.nodes) - 1) + [Role.PRIMARY]
        if roles != want:
            return False
        return all(
            sorted(cast(list[int], node.engine.status()["members"])) == sorted(self.nodes)
            for node in self.nodes.values()
        )

    async def close(self) -> None:
        for node in self.nodes.values():
            node.driver.stop()
            node.endpoint.close()
        await asyncio.gather(*(node.endpoint.wait_closed() for node in self.nodes.values()))


def test_three_nodes_form_a_group_and_replicate_a_request() -> None:
    async def main() -> None:
        c = await Cluster.start()
        try:
            await c.wait_until(c.formed, 5.0, "one primary and two admitted backups")
            primary = [n for n, node in c.nodes.items() if node.engine.is_primary]
            assert primary == [1]  # the lowest id founds the group
            gw = c.nodes[2]  # a backup's gateway
            seq = gw.engine.submit(b"SET k v")
            gw.driver.poke()
            await c.wait_until(
                lambda: (
                    all(node.delivered() == [b"SET k v"] for node in c.nodes.values())
                    and gw.stable() >= seq
                ),
                2.0,
                "delivery on all three and stability at the gateway",
            )
            for node in c.nodes.values():
                assert node.fences == []
                assert node.engine.filter.rejected == {}
                assert node.driver.failure is None and node.driver.healthy()
                assert node.driver.receive_errors == node.driver.callback_errors == 0
                assert node.endpoint.errors == node.endpoint.dropped == 0
                assert node.driver.timer_deadline == node.engine.get_timer()
        finally:
            await c.close()

    run(main)


def test_backups_filter_confirmations_exactly_while_nothing_here_needs_them() -> None:
    async def main() -> None:
        c = await Cluster.start(filter_acks=True)
        try:
            await c.wait_until(c.formed, 5.0, "one primary and two admitted backups")
            primary, gw, other = c.nodes[1], c.nodes[2], c.nodes[3]
            await c.wait_until(
                lambda: gw.driver.acks_filtered and other.driver.acks_filtered,
                2.0,
                "both backups filtering",
            )
            assert not primary.driver.acks_filtered and not primary.endpoint.ack_filter
            gw.trace.clear()
            skipped = other.engine.acks_skipped
            seq = gw.engine.submit(b"SET k v")
            gw.driver.poke()
            await c.wait_until(
                lambda: gw.stable() >= seq and gw.driver.acks_filtered,
                2.0,
                "the request stable and the filter back on",
            )
            # Off before the request left, on again only once the gateway awaited nothing.
            sends = [i for i, (what, t) in enumerate(gw.trace) if what == "send" and t == 1]
            switches = [(i, on) for i, (what, on) in enumerate(gw.trace) if what == "filter"]
            assert switches[0][1] == 0 and switches[0][0] < sends[0]
            assert switches[-1][1] == 1 and switches[-1][0] > sends[0]
            # The primary read every confirmation; the filtering backups never woke for one.
            assert primary.engine.member.acks[2] >= 1 and primary.engine.member.acks[3] >= 1
            assert other.engine.acks_skipped == skipped
        finally:
            await c.close()

    run(main)


def test_garbage_and_wrong_key_datagrams_are_counted_and_harmless() -> None:
    async def main() -> None:
        c = await Cluster.start()
        try:
            await c.wait_until(c.formed, 5.0, "the group")
            # a stranger with the right cluster id and the wrong key, speaking real protocol
            stranger_cfg = ProtocolConfig(
                cluster_id=c.cfg.cluster_id, nodes=(1, 2, 3), key=b"x" * 32
            )
            stranger = NodeEngine(stranger_cfg, 2, 99, 0.0)
            stranger.handle_timer(0.0)
            stranger.submit(b"SET evil 1")
            wrong_key = stranger.datagrams_to_send(0.0)
            assert wrong_key
            rng = random.Random(7)
            garbage = [
                b"",
                b"\x00",
                b"hello world",
                *(rng.randbytes(rng.randint(1, 1400)) for _ in range(50)),
            ]

            # The stranger claims to be node 2: node 2 drops those unread as its own looped-back
            # datagrams (nothing from itself is ever acted upon); the others reject their HMAC.
            def dropped(n: int) -> int:
                f = c.nodes[n].engine.filter
                return sum(f.rejected.values()) + (f.own if n == 2 else 0)

            before = {n: dropped(n) for n in c.nodes}
            tx = loopback_sender(c.group)
            try:
                for d in garbage + wrong_key:
                    tx.sendto(d, (c.group, c.port))
            finally:
                tx.close()
            total = len(garbage) + len(wrong_key)
            await c.wait_until(
                lambda: all(dropped(n) - before[n] >= total for n in c.nodes),
                2.0,
                "every receiver to count every bad datagram",
            )
            for n, node in c.nodes.items():
                if n != 2:
                    assert node.engine.filter.rejected.get("bad_hmac", 0) >= len(wrong_key)
            # nothing broke: same roles, and the group still serves
            assert c.formed()
            seq = c.nodes[3].engine.submit(b"SET k v")
            c.nodes[3].driver.poke()
            await c.wait_until(
                lambda: (
                    all(node.delivered() == [b"SET k v"] for node in c.nodes.values())
                    and c.nodes[3].stable() >= seq
                ),
                2.0,
                "service after the garbage",
            )
            for node in c.nodes.values():
                assert node.driver.receive_errors == 0 and node.driver.healthy()
                assert b"SET evil 1" not in node.delivered()
        finally:
            await c.close()

    run(main)


def test_idle_node_sleeps_until_its_deadlines() -> None:
    async def main() -> None:
        c = await Cluster.start()
        try:
            await c.wait_until(c.formed, 5.0, "the group")
            cfg = c.cfg
            tick = cfg.heartbeat_interval / 2  # the engine's housekeeping tick
            bound = 1 / cfg.heartbeat_interval + 1 / tick
            w0 = {n: node.driver.wakeups for n, node in c.nodes.items()}
            cpu0, t0 = time.process_time(), time.monotonic()
            await asyncio.sleep(1.0)  # measuring an idle second is the point, not a wait
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            for n, node in c.nodes.items():
                rate = (node.driver.wakeups - w0[n]) / wall
                assert 0.5 / cfg.heartbeat_interval <= rate <= 1.3 * bound, (n, rate, bound)
                assert node.driver.healthy()
            # three nodes, their heartbeats and acks: a busy loop would burn the whole second
            assert cpu < 0.5 * wall, (cpu, wall)
            assert c.formed()
        finally:
            await c.close()

    run(main)


def test_one_timer_follows_the_engine_deadline() -> None:
    async def main() -> None:
        c = await Cluster.start(nodes=(1,))
        node = c.nodes[1]
        try:
            await c.wait_until(lambda: node.engine.is_primary, 3.0, "a group of one")
            loop = asyncio.get_running_loop()
            for _ in range(20):
                assert node.driver.timer_deadline == node.engine.get_timer()
                assert node.driver.timer_deadline is not None
                assert node.driver.timer_deadline >= loop.time() - 0.05
                node.engine.submit(b"x")
                node.driver.poke()
                await c.wait_until(lambda: bool(node.events), 1.0, "an event")
                node.events.clear()
            # cancelled and re-armed handles never pile up in the loop's schedule
            live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            assert len([h for h in live if h._callback == node.driver._on_timer]) == 1
        finally:
            await c.close()
        assert node.driver.timer_deadline is None and not node.driver.healthy()

    run(main)


def test_driver_survives_host_bugs_and_stops_on_engine_bugs() -> None:
    async def main() -> None:
        c = await Cluster.start(nodes=(1,))
        node = c.nodes[1]
        try:
            await c.wait_until(lambda: node.engine.is_primary, 3.0, "a group of one")
            inner = node.driver.on_event
            assert inner is not None

            def buggy(ev: Event) -> None:
                inner(ev)
                raise RuntimeError("host bug")

            node.driver.on_event = buggy
            node.engine.submit(b"x")
            node.driver.poke()
            await c.wait_until(lambda: node.driver.callback_errors > 0, 1.0, "the host bug")
            assert node.driver.healthy()

            # an engine that raises on one datagram loses that datagram, not the node
            real_receive = node.engine.receive_datagram

            def poisoned(data: bytes, now: float) -> None:
                if data == b"poison":
                    raise RuntimeError("engine bug on one datagram")
                real_receive(data, now)

            node.engine.receive_datagram = poisoned  # type: ignore[method-assign]
            tx = loopback_sender(c.group)
            try:
                tx.sendto(b"poison", (c.group, c.port))
            finally:
                tx.close()
            await c.wait_until(lambda: node.driver.receive_errors == 1, 1.0, "the poison")
            assert node.driver.healthy() and node.engine.is_primary

            def broken(now: float) -> None:
                raise RuntimeError("engine bug")

            failures: list[BaseException] = []

            def failed(exc: BaseException) -> None:
                failures.append(exc)
                c.changed.set()

            node.driver.on_failure = failed
            node.engine.handle_timer = broken  # type: ignore[method-assign]
            await c.wait_until(
                lambda: node.driver.failure is not None, 1.0, "the engine bug to stop the driver"
            )
            assert not node.driver.healthy() and node.driver.timer_deadline is None
            assert [str(e) for e in failures] == ["engine bug"]
            with pytest.raises(RuntimeError, match="cannot be restarted"):
                node.driver.start()
        finally:
            await c.close()

    run(main)
