"""Point-to-point state transfer: a joining backup fetches its snapshot from the primary by TCP.

The protocol core (stream transfer) multicasts only a small authenticated ``STATE_OFFER``
(snapshot id, size, SHA-256) and hands the snapshot to its host (``SnapshotReady``). This module
is that host side on both ends:

* :class:`StateServer` on every node, at ``address:state_port``, serves the snapshots its engine
  made ready, each only to the joiner (node and incarnation) it was made for. It streams the blob
  in chunks and awaits ``drain()`` after each, so a slow joiner or a large state never holds up
  the event loop, and with it the multicast path and the clients.
* :func:`fetch_snapshot` on the joiner connects to the offering node, sends a request
  authenticated with the cluster key, reads with a timeout and a size limit, and hashes the
  stream as it arrives against the digest from the offer; the parts go to the engine's
  ``install_state`` with that digest (the offer's size and digest are checked there too, so
  12 MB is not hashed a second time on the loop).
* :class:`SnapshotChannel` wires both to the engine's events for the agent.

The stream itself is not authenticated: the digest in the authenticated offer is what makes a
blob trustworthy, so a corrupted or forged stream is refused, never installed.

Request (big-endian), then ``HMAC-SHA256(key, DOMAIN + request)``::

    magic "APST" | version u8 | cluster_id u32 | snapshot_id u32
    | requester node u16 | requester incarnation u32 | source node u16 | source incarnation u32

Response: ``status u8`` (0: the blob follows as ``size u64`` and ``size`` bytes; otherwise a
refusal, with a u32-length UTF-8 reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from appliance.node.config import ClusterConfig, NodeConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import SnapshotOffered, SnapshotReady, SnapshotReleased
from appliance.protocols.wire.errors import WireError
from appliance.protocols.wire.fields import Reader, Writer

__all__ = [
    "SnapshotChannel",
    "SnapshotRequest",
    "StateServer",
    "StateTransferError",
    "fetch_snapshot",
    "sha256_steps",
]

log = logging.getLogger("appliance.state_transfer")

MAGIC = b"APST"
VERSION = 1
DOMAIN = b"appliance state transfer request\x00"
"""Prefixed to what the HMAC covers, so a request MAC can never pass for any other one."""
MAC_LEN = 32
REQUEST_LEN = len(MAGIC) + 1 + 4 + 4 + 2 + 4 + 2 + 4 + MAC_LEN
OK, REFUSED = 0, 1
CHUNK = 64 * 1024
"""Bytes written per turn of the loop (and read per call on the joiner): a 12 MB snapshot
written while the joiner's socket had room held the primary's loop 2.7 ms, which every
write in flight waited out."""
REQUEST_TIMEOUT = 5.0
"""How long the server waits for a connection's request."""
_SIZE = struct.Struct(">Q")
_LEN = struct.Struct(">I")


class StateTransferError(Exception):
    """A fetch that did not produce the offered snapshot; the message says why."""


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Who asks for which snapshot from whom: everything the server checks before serving."""

    cluster_id: int
    snapshot_id: int
    node: int
    incarnation: int
    source_node: int
    source_incarnation: int

    def _body(self) -> bytes:
        w = Writer().u8(VERSION).u32(self.cluster_id).u32(self.snapshot_id)
        w.u16(self.node).u32(self.incarnation).u16(self.source_node)
        return MAGIC + w.u32(self.source_incarnation).getvalue()

    def encode(self, key: bytes) -> bytes:
        body = self._body()
        return body + hmac.digest(key, DOMAIN + body, "sha256")

    @classmethod
    def decode(cls, data: bytes, key: bytes) -> SnapshotRequest:
        """The request in ``data`` (exactly ``REQUEST_LEN`` bytes); raises StateTransferError."""
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if len(data) != REQUEST_LEN or body[: len(MAGIC)] != MAGIC:
            raise StateTransferError("not a state-transfer request")
        if not hmac.compare_digest(mac, hmac.digest(key, DOMAIN + body, "sha256")):
            raise StateTransferError("authentication failed (bad HMAC: wrong cluster key?)")
        try:
            r = Reader(body[len(MAGIC) :])
            version = r.u8()
            if version != VERSION:
                raise StateTransferError(f"unsupported request version {version}")
            req = cls(r.u32(), r.u32(), r.u16(), r.u32(), r.u16(), r.u32())
            r.finish()
        except WireError as e:
            raise StateTransferError(f"malformed request: {e}") from None
        return req


def _refusal(reason: str) -> bytes:
    return bytes([REFUSED]) + Writer().text(reason).getvalue()


class StateServer:
    """Serves this node's ready snapshots to the joiners they were made for."""

    def __init__(
        self, cluster_id: int, key: bytes, node: int, incarnation: int, name: str = ""
    ) -> None:
        self.cluster_id = cluster_id
        self.key = key
        self.node = node
        self.incarnation = incarnation
        self.name = name or f"node {node}"
        self.ready: dict[int, SnapshotReady] = {}
        self.server: asyncio.Server | None = None
        self.served = 0
        self.refused = 0
        self.bytes_sent = 0
        self._connections: set[asyncio.Task[None]] = set()

    def offer(self, ev: SnapshotReady) -> None:
        self.ready[ev.snapshot_id] = ev

    def release(self, snapshot_id: int) -> None:
        self.ready.pop(snapshot_id, None)

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._connections):
            t.cancel()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)

    def _check(self, req: SnapshotRequest) -> SnapshotReady:
        if req.cluster_id != self.cluster_id:
            raise StateTransferError(f"request for cluster {req.cluster_id:#x}")
        if (req.source_node, req.source_incarnation) != (self.node, self.incarnation):
            raise StateTransferError(
                f"request for node {req.source_node} incarnation {req.source_incarnation} "
                f"(this is node {self.node} incarnation {self.incarnation})"
            )
        ready = self.ready.get(req.snapshot_id)
        if ready is None:
            raise StateTransferError(f"snapshot {req.snapshot_id} is not on offer here")
        if (ready.joiner, ready.joiner_incarnation) != (req.node, req.incarnation):
            raise StateTransferError(
                f"snapshot {req.snapshot_id} was offered to node {ready.joiner} incarnation "
                f"{ready.joiner_incarnation}, not to incarnation {req.incarnation} of node "
                f"{req.node}"
            )
        return ready

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            try:
                data = await asyncio.wait_for(reader.readexactly(REQUEST_LEN), REQUEST_TIMEOUT)
                req = SnapshotRequest.decode(data, self.key)
                ready = self._check(req)
            except (TimeoutError, asyncio.IncompleteReadError):
                self.refused += 1
                log.error("%s: state request from %s: incomplete request", self.name, peer)
                return
            except StateTransferError as e:
                self.refused += 1
                log.error("%s: state request from %s refused: %s", self.name, peer, e)
                writer.write(_refusal(str(e)))
                await writer.drain()
                return
            size = ready.size
            started = time.monotonic()
            writer.write(bytes([OK]) + _SIZE.pack(size))
            for part in ready.parts:  # one blob to the joiner, never joined here
                view = memoryview(part)
                for i in range(0, len(view), CHUNK):
                    writer.write(view[i : i + CHUNK])
                    await writer.drain()  # waits while the joiner's socket is full, and
                    await asyncio.sleep(0)  # else (drain returns at once) the loop runs
            await writer.drain()
            self.served += 1
            self.bytes_sent += size
            log.info(
                "%s: served snapshot %d (%d bytes) to node %d over TCP in %.3f s",
                self.name,
                req.snapshot_id,
                size,
                req.node,
                time.monotonic() - started,
            )
        except (ConnectionError, OSError) as e:
            log.warning("%s: state transfer to %s broke off: %s", self.name, peer, e)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


HASH_STEP = 1 << 20
"""Bytes hashed per step of :func:`sha256_steps`: about 0.7 ms on the lab machine."""


def sha256_steps(parts: Sequence[bytes], step: int = HASH_STEP) -> Generator[None, None, bytes]:
    """SHA-256 of the parts' concatenation, yielding after every ``step`` bytes or so.

    For the primary's event loop: the digest of a 12 MB snapshot in one call takes 9 ms, long
    enough to show in every client's latency that waits behind it.
    """
    h = hashlib.sha256()
    pending = 0
    for part in parts:
        view = memoryview(part)
        for i in range(0, len(view), step):
            piece = view[i : i + step]
            h.update(piece)
            pending += len(piece)
            if pending >= step:
                pending = 0
                yield
    return h.digest()


async def _read(reader: asyncio.StreamReader, n: int, timeout: float, what: str) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except TimeoutError:
        raise StateTransferError(f"no {what} within {timeout:.1f} s") from None
    except asyncio.IncompleteReadError as e:
        raise StateTransferError(
            f"connection closed after {len(e.partial)} of {n} bytes of {what}"
        ) from None


async def fetch_snapshot(
    host: str,
    port: int,
    req: SnapshotRequest,
    key: bytes,
    size: int,
    digest: bytes,
    timeout: float,
) -> list[bytes]:
    """The offered snapshot's blob from ``host:port``, in the parts it arrived in (12 MB
    joined is a copy the engine makes once, of the application's part only); raises
    StateTransferError.

    ``size`` and ``digest`` come from the authenticated offer: the server's stated size must be
    exactly ``size`` (which also bounds what is read), and the bytes must hash to ``digest``.
    ``timeout`` applies to the connection and to each read, so a stalled server fails the fetch
    but a slow, steady one does not.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        raise StateTransferError(
            f"cannot connect to {host}:{port} within {timeout:.1f} s"
        ) from None
    except OSError as e:
        raise StateTransferError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    try:
        writer.write(req.encode(key))
        await writer.drain()
        status = (await _read(reader, 1, timeout, "response"))[0]
        if status != OK:
            n = _LEN.unpack(await _read(reader, 4, timeout, "refusal"))[0]
            reason = await _read(reader, min(n, 4096), timeout, "refusal")
            raise StateTransferError(f"refused: {reason.decode(errors='replace')}")
        (stated,) = _SIZE.unpack(await _read(reader, 8, timeout, "size"))
        if stated != size:
            raise StateTransferError(f"server sends {stated} bytes, the offer said {size}")
        h = hashlib.sha256()
        parts: list[bytes] = []
        left = size
        while left:
            try:
                part = await asyncio.wait_for(reader.read(min(left, CHUNK)), timeout)
            except TimeoutError:
                raise StateTransferError(
                    f"stalled after {size - left} of {size} bytes for {timeout:.1f} s"
                ) from None
            if not part:
                raise StateTransferError(f"connection closed after {size - left} of {size} bytes")
            h.update(part)
            parts.append(part)
            left -= len(part)
        if not hmac.compare_digest(h.digest(), digest):
            raise StateTransferError("digest mismatch: the data is not the offered snapshot")
        return parts
    except (ConnectionError, OSError) as e:
        raise StateTransferError(f"connection to {host}:{port} failed: {e}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class SnapshotChannel:
    """The agent's side of the stream transfer: serves on one end, fetches on the other.

    ``endpoint(node)`` gives a node's ``(address, state_port)``; ``poke`` lets the engine's
    driver send and drain after the fetch's result went into the engine.
    """

    def __init__(
        self,
        engine: NodeEngine,
        key: bytes,
        endpoint: Callable[[int], tuple[str, int]],
        poke: Callable[[], None],
        name: str = "",
    ) -> None:
        cfg = engine.cfg
        self.engine = engine
        self.key = key
        self.endpoint = endpoint
        self.poke = poke
        self.name = name or f"node {engine.node}"
        self.server = StateServer(cfg.cluster_id, key, engine.node, engine.incarnation, name)
        self.timeout = max(1.0, cfg.join_retry * 10)
        self.fetch: asyncio.Task[None] | None = None
        self.fetched = 0
        self.failed = 0
        self.bytes_received = 0

    @classmethod
    def for_node(
        cls,
        cfg: ClusterConfig,
        me: NodeConfig,
        engine: NodeEngine,
        key: bytes,
        poke: Callable[[], None],
    ) -> SnapshotChannel:
        """The channel of node ``me``, reaching every peer at its configured state port."""

        def endpoint(node: int) -> tuple[str, int]:
            peer = cfg.node_by_id(node)
            return peer.address, peer.state_port

        return cls(engine, key, endpoint, poke, me.name)

    async def start(self, host: str, port: int) -> None:
        await self.server.start(host, port)

    async def close(self) -> None:
        if self.fetch is not None:
            self.fetch.cancel()
        await self.server.close()

    def on_event(self, ev: SnapshotReady | SnapshotReleased | SnapshotOffered) -> None:
        if isinstance(ev, SnapshotReady):
            self.server.offer(ev)
        elif isinstance(ev, SnapshotReleased):
            self.server.release(ev.snapshot_id)
        else:
            if self.fetch is not None:
                self.fetch.cancel()  # a new offer replaces the fetch still running
            self.fetch = asyncio.get_running_loop().create_task(self._fetch(ev))

    async def _fetch(self, ev: SnapshotOffered) -> None:
        eng = self.engine
        host, port = self.endpoint(ev.source_node)
        req = SnapshotRequest(
            eng.cfg.cluster_id,
            ev.snapshot_id,
            eng.node,
            eng.incarnation,
            ev.source_node,
            ev.source_incarnation,
        )
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            parts = await fetch_snapshot(
                host, port, req, self.key, ev.size, ev.digest, self.timeout
            )
        except StateTransferError as e:
            self.failed += 1
            log.error(
                "%s: state transfer of snapshot %d from node %d (%s:%d) failed: %s",
                self.name,
                ev.snapshot_id,
                ev.source_node,
                host,
                port,
                e,
            )
            eng.state_fetch_failed(ev.snapshot_id, str(e), loop.time())
            self.poke()
            return
        size = sum(map(len, parts))
        # Hashed as it arrived and checked against the offer: not again on the loop.
        if eng.install_state(ev.snapshot_id, parts, loop.time(), ev.digest):
            self.fetched += 1
            self.bytes_received += size
            log.info(
                "%s: state transfer: fetched snapshot %d (%d bytes) from node %d over TCP "
                "in %.3f s",
                self.name,
                ev.snapshot_id,
                size,
                ev.source_node,
                time.monotonic() - started,
            )
        else:
            log.warning("%s: snapshot %d arrived after its offer lapsed", self.name, ev.snapshot_id)
        self.poke()
