"""Point-to-point state transfer: the TCP server and client on loopback, then three agents.

The first tests run a :class:`StateServer` and :func:`fetch_snapshot` on real sockets in one
event loop: a good fetch, the refusals (wrong key, wrong joiner, a snapshot not on offer), a
stream that does not match the offer's digest, and a multi-megabyte snapshot streamed while the
loop keeps running other work. The last one is the whole agent: a backup killed with SIGKILL
rejoins through the TCP transfer while a client keeps writing, and serves every key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from appliance.node.snapshot_child import ENV as ENCODER_ENV
from appliance.node.state_transfer import (
    SnapshotRequest,
    StateServer,
    StateTransferError,
    fetch_snapshot,
    sha256_steps,
)
from appliance.protocols.events import SnapshotReady
from tests.node.test_agent import NAMES, Cluster, free_port, wait_for, write_config
from tests.steps import run_steps

KEY = b"t" * 32
CLUSTER = 0xC0FFEE
LO = "127.0.0.1"
TEST_BUDGET = 20.0


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_BUDGET):
            await coro()

    asyncio.run(bounded())


def request(snapshot_id: int = 5, node: int = 2, incarnation: int = 7) -> SnapshotRequest:
    return SnapshotRequest(CLUSTER, snapshot_id, node, incarnation, 1, 3)


async def serving(blob: bytes, snapshot_id: int = 5) -> StateServer:
    server = StateServer(CLUSTER, KEY, node=1, incarnation=3, name="n1")
    server.offer(SnapshotReady(snapshot_id, 2, 7, (blob[:3], blob[3:])))  # served as one
    await server.start(LO, 0)
    return server


async def fetch(
    server: StateServer,
    blob: bytes,
    req: SnapshotRequest | None = None,
    key: bytes = KEY,
    digest: bytes | None = None,
) -> bytes:
    """The fetched blob, joined (the engine is handed the parts)."""
    d = hashlib.sha256(blob).digest() if digest is None else digest
    parts = await fetch_snapshot(LO, server.port, req or request(), key, len(blob), d, 2.0)
    return b"".join(parts)


def test_the_joiner_it_was_offered_to_fetches_the_snapshot() -> None:
    async def main() -> None:
        blob = os.urandom(200_000)
        server = await serving(blob)
        try:
            assert await fetch(server, blob) == blob
            assert await fetch(server, blob) == blob  # a retry is served again
            assert (server.served, server.refused, server.bytes_sent) == (2, 0, 400_000)
        finally:
            await server.close()

    run(main)


def test_a_request_with_the_wrong_key_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        blob = b"secret state"
        server = await serving(blob)
        try:
            with pytest.raises(StateTransferError, match="authentication failed"):
                await fetch(server, blob, key=b"x" * 32)
            assert server.served == 0 and server.refused == 1
        finally:
            await server.close()

    with caplog.at_level(logging.ERROR, "appliance.state_transfer"):
        run(main)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "state request from" in record.getMessage()
    assert "refused: authentication failed (bad HMAC: wrong cluster key?)" in record.getMessage()


def test_only_the_offered_snapshot_and_only_to_its_joiner() -> None:
    async def main() -> None:
        blob = b"state" * 100
        server = await serving(blob)
        try:
            with pytest.raises(StateTransferError, match="offered to node 2 incarnation 7"):
                await fetch(server, blob, request(incarnation=8))  # the joiner restarted
            with pytest.raises(StateTransferError, match="snapshot 6 is not on offer"):
                await fetch(server, blob, request(snapshot_id=6))
            other_cluster = SnapshotRequest(CLUSTER + 1, 5, 2, 7, 1, 3)
            with pytest.raises(StateTransferError, match="request for cluster"):
                await fetch(server, blob, other_cluster)
            stale_source = SnapshotRequest(CLUSTER, 5, 2, 7, 1, 2)
            with pytest.raises(StateTransferError, match="incarnation 2"):
                await fetch(server, blob, stale_source)
            server.release(5)
            with pytest.raises(StateTransferError, match="not on offer"):
                await fetch(server, blob)
            assert server.refused == 5
        finally:
            await server.close()

    run(main)


def test_a_stream_that_does_not_match_the_offer_is_rejected() -> None:
    async def main() -> None:
        blob = b"the real state" * 1000
        server = await serving(blob)
        try:
            with pytest.raises(StateTransferError, match="digest mismatch"):
                await fetch(server, blob, digest=hashlib.sha256(b"another").digest())
            with pytest.raises(StateTransferError, match="the offer said"):
                await fetch_snapshot(LO, server.port, request(), KEY, len(blob) + 1, bytes(32), 2.0)
        finally:
            await server.close()

    run(main)


def test_a_dead_or_stalled_server_fails_the_fetch_with_a_reason() -> None:
    async def main() -> None:
        with pytest.raises(StateTransferError, match="cannot connect"):
            await fetch_snapshot(LO, free_port(), request(), KEY, 1, bytes(32), 1.0)

        async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10)  # accepts, then never answers

        silent = await asyncio.start_server(mute, LO, 0)
        port = silent.sockets[0].getsockname()[1]
        try:
            with pytest.raises(StateTransferError, match=r"no response within 0\.3 s"):
                await fetch_snapshot(LO, port, request(), KEY, 1, bytes(32), 0.3)
        finally:
            silent.close()

    run(main)


def test_a_large_snapshot_streams_while_the_loop_keeps_serving() -> None:
    """8 MB in one loop with a 1 ms ticker: the ticker never waits long (drain per chunk)."""

    async def main() -> None:
        blob = os.urandom(8 << 20)
        server = await serving(blob)
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        try:
            started = time.monotonic()
            got = await fetch(server, blob)
            took = time.monotonic() - started
        finally:
            done.set()
            await tick
            await server.close()
        assert got == blob
        # The transfer yields to the loop throughout: the ticker ran all along, and no single
        # stretch blocked it for long (a one-shot write of 8 MB would show as one long gap).
        print(f"8 MB in {took:.3f} s, {len(gaps)} ticks, longest gap {max(gaps) * 1000:.1f} ms")
        assert len(gaps) >= 3
        assert max(gaps) < max(0.1, took / 3), (max(gaps), took)

    run(main)


# -- the agents --------------------------------------------------------------------------------


@pytest.fixture(params=["child", "loop"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three agents; the primary encodes snapshots in a forked child, or on its loop."""
    config, nodes = write_config(tmp_path)
    c = Cluster(tmp_path, config, nodes)
    try:
        for name in NAMES:
            c.start(name, {ENCODER_ENV: request.param})
        yield c
    finally:
        c.stop_all()


def logged(cluster: Cluster, name: str, pattern: str, since: int = 0) -> re.Match[str] | None:
    """``pattern`` in node ``name``'s log (from byte ``since``); the agents log every role
    change. (INFO replication is no help here: it is a command, answered by the primary.)"""
    text = (cluster.dir / f"{name}.log").read_bytes()[since:].decode(errors="replace")
    return re.search(pattern, text)


def read_all(client: redis.Redis, names: list[str], batch: int = 1000) -> list[object]:
    """GET every key, pipelined ``batch`` at a time (as a well-behaved client would)."""
    values: list[object] = []
    for lo in range(0, len(names), batch):
        pipe = client.pipeline(transaction=False)
        for name in names[lo : lo + batch]:
            pipe.get(name)
        values += pipe.execute()
    return values


def kill(cluster: Cluster, name: str) -> None:
    proc = cluster.nodes[name].proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)


def test_killed_backup_rejoins_by_tcp_state_transfer_while_clients_write(
    cluster: Cluster,
) -> None:
    nodes = cluster.nodes
    primary, writer_node, victim = NAMES  # the lowest id founds the group
    for n in (writer_node, victim):
        wait_for(f"{n} a backup", partial(logged, cluster, n, "role BACKUP"), 20.0)
    keys = 20_000
    client = nodes[primary].client(timeout=10.0)
    for lo in range(0, keys, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, lo + 1000):
            pipe.set(f"key:{i}", f"value-{i}")
        assert all(pipe.execute())

    kill(cluster, victim)
    wait_for(
        f"{victim} removed",
        partial(logged, cluster, primary, r"installed view \d+ \[1#\d+, 2#\d+\]"),
        10.0,
    )

    # A client keeps writing through another node for the whole rejoin.
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def write_loop() -> None:
        c = nodes[writer_node].client(timeout=5.0)
        i = 0
        while not stop.is_set():
            try:
                # An INCR is not idempotent: a snapshot that held a write past its index
                # would have the joiner apply it twice, and the counter would show it.
                assert c.pipeline(transaction=False).set(f"live:{i}", str(i)).incr(
                    "counter"
                ).execute() == [True, i + 1]
                written.append(i)
                i += 1
            except (redis.RedisError, OSError) as e:
                errors.append(e)
                return

    writer = threading.Thread(target=write_loop, daemon=True)
    writer.start()
    try:
        wait_for("writes after the kill", lambda: len(written) > 20 or None, 10.0)
        since = (cluster.dir / f"{victim}.log").stat().st_size
        primary_since = (cluster.dir / f"{primary}.log").stat().st_size
        cluster.start(victim)
        pattern = r"state transfer: fetched snapshot \d+ \((\d+) bytes\) from node 1 over TCP"
        fetched = wait_for(
            "the TCP state transfer", partial(logged, cluster, victim, pattern, since), 20.0
        )
        assert int(fetched[1]) > keys * 10  # the whole key space came over the stream
        wait_for(
            f"{victim} a backup again", partial(logged, cluster, victim, "role BACKUP", since), 20.0
        )
        during = len(written)
        wait_for("writes after the rejoin", lambda: len(written) > during + 20 or None, 10.0)
    finally:
        stop.set()
        writer.join(10)
    assert not errors, errors
    assert not writer.is_alive()
    served = r"served snapshot \d+ \((\d+) bytes\) to node 3 over TCP"
    m = logged(cluster, primary, served, primary_since)
    assert m is not None and m[1] == fetched[1]

    # Every key is readable through the rejoined node...
    values = read_all(nodes[victim].client(timeout=10.0), [f"key:{i}" for i in range(keys)])
    missing = [i for i, v in enumerate(values) if v != f"value-{i}".encode()]
    assert not missing, f"{len(missing)} keys not readable through {victim}: {missing[:5]}"
    # ... and it holds them itself: with both other nodes gone it serves them alone.
    kill(cluster, primary)
    wait_for(f"{writer_node} primary", partial(logged, cluster, writer_node, "role PRIMARY"), 10.0)
    kill(cluster, writer_node)
    wait_for(f"{victim} primary", partial(logged, cluster, victim, "role PRIMARY", since), 10.0)
    names = [f"key:{i}" for i in range(keys)] + [f"live:{i}" for i in written] + ["counter"]
    values = read_all(nodes[victim].client(timeout=10.0), names)
    expected = [f"value-{i}".encode() for i in range(keys)] + [str(i).encode() for i in written]
    expected.append(str(len(written)).encode())
    wrong = [i for i, (v, e) in enumerate(zip(values, expected, strict=True)) if v != e]
    assert not wrong, f"{len(wrong)} of {len(values)} values wrong on {victim} alone"


@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(1, 17))
def test_hashing_in_steps_is_the_digest_of_the_parts_joined(parts: list[bytes], step: int) -> None:
    """The primary hashes a joiner's snapshot a megabyte per loop iteration: same digest as
    one call over the whole, and it yields once per ``step`` bytes (never on nothing)."""
    digest, yields = run_steps(sha256_steps(parts, step))
    total = sum(map(len, parts))
    assert digest == hashlib.sha256(b"".join(parts)).digest()
    assert total // (2 * step) <= yields <= total // step
