"""The node agent: ``appliance agent --config FILE``, the process every node runs.

A thin asyncio shell around the sans-I/O core, with no protocol logic of its own:

* the cluster's multicast group, driven by :class:`EngineDriver` around one :class:`NodeEngine`
  (whose incarnation comes from a persisted counter that grows on every start);
* a :class:`Replicator` applying delivered inputs to the KV service in the configured style;
* the client gateway: a TCP server speaking RESP. Every complete command is submitted to the
  engine as one RESP array; the engine releases the replies in request order (only once every
  backup holds the request: output commit), and each is written to the connection it belongs
  to, in the order that connection sent its commands (pipelining);
* state transfer: a joining backup fetches its snapshot from the primary over TCP
  (:mod:`appliance.node.state_transfer`, at each node's ``state_port``);
* fencing with the target node's ``command`` fence devices (``ARGV... NODE off``);
* systemd: ``READY=1`` once primary or backup, ``STATUS=`` on every role or view change, the
  watchdog while the driver is healthy, ``STOPPING=1`` on SIGTERM;
* the local control channel (:mod:`appliance.node.control`): ``appliance status``,
  ``step-down`` and ``fence``; on SIGTERM a primary hands over and a backup leaves first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from appliance.hw.power import PowerDevice
from appliance.node import event_loop, snapshot_child
from appliance.node.client_session import ClientSession
from appliance.node.config import (
    ClusterConfig,
    ConfigError,
    NodeConfig,
    load_config,
    load_key,
)
from appliance.node.control import ControlServer, socket_path
from appliance.node.hardware import NodeHardware
from appliance.node.info import wants_replication, with_local_replication
from appliance.node.snapshot_child import Encoder, ForkedSnapshot, choose_encoder
from appliance.node.snapshot_child import Result as SnapshotResult
from appliance.node.state_transfer import SnapshotChannel, sha256_steps
from appliance.node.systemd import SystemdNotifier, WatchdogPinger
from appliance.node.transport import EngineDriver, MulticastEndpoint, pick_interface
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import (
    Event,
    FenceRequested,
    HandoverFinished,
    ReplyReceived,
    RoleChanged,
    SnapshotInstalled,
    SnapshotOffered,
    SnapshotReady,
    SnapshotReleased,
    SnapshotRequested,
    Stalled,
    StateReset,
    ViewInstalled,
)
from appliance.protocols.messages import Role
from appliance.protocols.replication import Replicator
from appliance.protocols.steps import drain
from appliance.service.app import KVApplication, replication_info
from appliance.service.resp import (
    ProtocolError,
    RequestParser,
    RespValue,
    encode,
    protocol_error_reply,
)

__all__ = ["Agent", "agent_main", "next_incarnation"]

log = logging.getLogger("appliance.agent")

DEFAULT_STATE_DIR = Path("/var/lib/appliance")
MAX_INCARNATION = 0xFFFFFFFF
CLOSE_GRACE = 10.0
"""After QUIT or a protocol error, how long a connection waits for its earlier replies."""
PIPELINE_SLICE = 32
"""Commands of one client's pipeline submitted before the loop gets a turn. A pipeline of
thousands arrives in one read; handled in one go it held the loop (and with it the heartbeat
wire and the heartbeats) long enough for the peers to see this node as failed and fence it."""


# -- the incarnation counter ---------------------------------------------------------------


def _state_dirs(explicit: Path | None) -> list[Path]:
    dirs = [explicit if explicit is not None else DEFAULT_STATE_DIR]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(Path(runtime) / "appliance")
    dirs.append(Path(tempfile.gettempdir()) / f"appliance-{os.getuid()}")
    return dirs


def _bump(path: Path) -> int:
    """Read the counter in ``path``, write it plus one durably (fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = 0
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = "0"
    try:
        previous = int(text)
    except ValueError:
        # A corrupt counter must not go backwards: the wall clock is beyond any real count.
        previous = int(time.time())
        log.warning("%s: unreadable incarnation %r; continuing from %d", path, text, previous)
    value = previous + 1
    if not 0 < value <= MAX_INCARNATION:
        raise OSError(f"{path}: incarnation {value} out of range 1..{MAX_INCARNATION}")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return value


def next_incarnation(state_dir: Path | None, cluster: str, node: str) -> tuple[int, Path]:
    """This start's incarnation (strictly greater than the last one) and the file holding it."""
    errors = []
    for d in _state_dirs(state_dir):
        path = d / f"{cluster}.{node}.incarnation"
        try:
            value = _bump(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror or e}")
            continue
        if errors:
            log.warning("incarnation kept in %s (%s)", path, "; ".join(errors))
        return value, path
    raise OSError("cannot persist the incarnation counter: " + "; ".join(errors))


# -- the client gateway --------------------------------------------------------------------


@dataclass
class _Slot:
    reply: bytes | None = None
    local_info: bool = False
    """An INFO reply whose replication section this node rewrites (see appliance.node.info)."""


@dataclass(eq=False)
class _Client:
    """One client connection: its replies, in the order it sent its commands."""

    transport: asyncio.Transport
    session: ClientSession
    slots: deque[_Slot] = field(default_factory=deque)
    closing: bool = False
    closed: bool = False

    def expect(self) -> _Slot:
        slot = _Slot()
        self.slots.append(slot)
        return slot

    def local(self, reply: bytes) -> None:
        """A reply the agent answers itself, in order behind the replies still awaited."""
        self.slots.append(_Slot(reply))
        self.flush()

    def flush(self) -> None:
        while self.slots and self.slots[0].reply is not None:
            reply = self.slots.popleft().reply
            assert reply is not None
            if not self.closed:
                self.transport.write(reply)
        if self.closing and not self.slots and not self.closed:
            self.transport.close()  # after QUIT or a protocol error, once every reply is out


def _is_debug_digest(argv: list[bytes]) -> bool:
    """``DEBUG DIGEST``: this replica's own state, answered here, never replicated.

    As on a Redis replica, it digests the data of the node asked, which is what comparing
    replicas needs (once writes stop, equal digests on every member show they converged). It
    walks every key, so it is a command to ask for, never part of ``INFO``, which monitoring
    polls often and which must stay cheap at any data size.
    """
    return len(argv) == 2 and argv[0].upper() == b"DEBUG" and argv[1].upper() == b"DIGEST"


RESTORE_MAX_DEFER = 0.005
"""Seconds a snapshot restore step waits at most for the group's datagrams to be read."""


# -- the agent -----------------------------------------------------------------------------


class Agent:
    def __init__(
        self,
        cfg: ClusterConfig,
        key: bytes,
        node: NodeConfig,
        state_dir: Path | None,
        snapshot_encoder: Encoder | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.me = node
        self.state_dir = state_dir
        self.pending: dict[int, tuple[_Client, _Slot]] = {}
        self.clients: set[_Client] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.ready = False
        self.exit_code = 0
        self.client_ids = 0
        self.fork_snapshots = (snapshot_encoder or choose_encoder(None)) is Encoder.CHILD
        """Encode a joiner's snapshot in a forked child (else in steps on the loop)."""
        self.snapshot_children: dict[int, ForkedSnapshot] = {}
        self.restoring: tuple[int, float] | None = None
        """The snapshot being restored in steps: its index, and when it started."""

    def _log(self, what: str, *args: object) -> None:
        view = self.engine.member.view
        log.info(
            "node=%s view=%s t=%.3f " + what,
            self.me.name,
            view.number if view is not None else "none",
            self.loop.time(),
            *args,
        )

    log_event = _log

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        cfg, me = self.cfg, self.me
        _, iface_addr = pick_interface(cfg.interface)
        incarnation, path = next_incarnation(self.state_dir, cfg.name, me.name)
        pcfg = cfg.protocol_config(self.key)
        self.max_payload = pcfg.max_payload
        self.engine = engine = NodeEngine(pcfg, me.id, incarnation, self.loop.time())
        self.local_replication = replication_info(engine)
        self.replicator = Replicator(
            engine,
            lambda det: KVApplication(det, replication_info(engine)),
            cfg.replication,
            clock=lambda: time.time_ns() // 1_000_000,
            entropy=os.urandom,
        )
        endpoint = await MulticastEndpoint.open(
            cfg.multicast_group, cfg.port, iface_addr, ttl=cfg.ttl
        )
        self.driver = driver = EngineDriver(engine, endpoint.send, self.on_event)
        endpoint.on_datagram = driver.receive
        driver.filter_acks = endpoint.filter_second_acks
        stop = asyncio.Event()

        def failed(exc: BaseException) -> None:
            self.exit_code = 1
            stop.set()

        driver.on_failure = failed
        self.hw = NodeHardware(cfg, me, engine, driver.poke, driver.healthy)
        self.snapshots = SnapshotChannel.for_node(cfg, me, engine, self.key, driver.poke)
        try:
            server = await self.loop.create_server(self._connection, me.address, me.client_port)
            await self.snapshots.start(me.address, me.state_port)
        except OSError:
            endpoint.close()
            self.hw.fencer.close()
            raise
        self.notifier = SystemdNotifier()
        pinger = WatchdogPinger.from_environment(self.notifier, driver.healthy)
        self.control = ControlServer(self, socket_path(cfg, me))
        try:
            await self.control.start()
        except OSError as e:
            log.error("node=%s no control channel: %s", me.name, e)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.control.on_signal, stop)
        log.info(
            "node=%s id=%d incarnation=%d (%s) group=%s:%d via %s clients=%s:%d state=%d style=%s",
            me.name,
            me.id,
            incarnation,
            path,
            cfg.multicast_group,
            cfg.port,
            iface_addr,
            me.address,
            me.client_port,
            me.state_port,
            cfg.replication.value,
        )
        driver.start()
        self.hw.start()
        if pinger is not None:
            pinger.start()
        self.notifier.status(self._summary())
        try:
            await stop.wait()
        finally:
            log.info("node=%s stopping", me.name)
            for child in self.snapshot_children.values():
                child.cancel()
            self.notifier.stopping()
            if pinger is not None:
                pinger.stop()
            driver.stop()
            server.close()
            for c in list(self.clients):
                c.closed = True
                c.transport.close()
            for t in list(self.tasks):
                t.cancel()
            await self.control.close()
            endpoint.close()
            await self.snapshots.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.hw.aclose(), 10.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            self.notifier.close()
        return self.exit_code

    # -- protocol events ---------------------------------------------------------------------

    def on_event(self, ev: Event) -> None:
        now = self.loop.time()
        self.replicator.handle(ev, now)
        if isinstance(ev, ReplyReceived):
            self._reply(ev.seq, ev.payload)
        elif isinstance(ev, SnapshotRequested):
            self._provide_snapshot(ev.snapshot_id)
        elif isinstance(ev, (SnapshotReady, SnapshotReleased, SnapshotOffered)):
            if isinstance(ev, SnapshotReleased) and (
                child := self.snapshot_children.pop(ev.snapshot_id, None)
            ):
                child.cancel()  # the admission ended before its snapshot was encoded
            self.snapshots.on_event(ev)  # point-to-point state transfer (TCP)
        elif isinstance(ev, SnapshotInstalled):
            self._log("installed a snapshot at index %d", ev.index)
            self._restore(ev.index, ev.app_state)
        elif isinstance(ev, FenceRequested):
            self._log("fencing node %d: %s", ev.node, ev.reason)
            task = self.loop.create_task(self._fence(ev.node))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(ev, RoleChanged):
            self._log("role %s: %s", ev.role.name, ev.reason)
            self.hw.show_role(ev.role)
            self._changed()
        elif isinstance(ev, ViewInstalled):
            self._log("installed %s", ev.view.describe())
            self._changed()
        elif isinstance(ev, StateReset):
            self._log("state reset: %s", ev.reason)
        elif isinstance(ev, Stalled):
            self._log(
                "this node stood still for %.0f ms (frozen or starved); peers' silence meanwhile "
                "is not held against them",
                ev.seconds * 1000,
            )
        elif isinstance(ev, HandoverFinished):
            self._log(
                "hand-over to node %s %s: %s",
                ev.successor,
                "done" if ev.ok else "FAILED",
                ev.reason,
            )
            self.control.on_event(ev)

    def _summary(self) -> str:
        view = self.engine.member.view
        members = ",".join(str(n) for n in view.nodes) if view is not None else "-"
        number = view.number if view is not None else "none"
        return f"{self.engine.role.name.lower()} view {number} members {members}"

    def _changed(self) -> None:
        self.notifier.status(self._summary())
        if not self.ready and self.engine.role in (Role.PRIMARY, Role.BACKUP):
            self.ready = True
            self.notifier.ready()

    # -- fencing -----------------------------------------------------------------------------

    async def power(self, target: NodeConfig, action: str) -> PowerDevice | None:
        """Power ``target`` "off" or "on" with the first of its fence devices that does it."""
        return await self.hw.power(target, action)

    async def power_with(self, dev: PowerDevice, target: NodeConfig, action: str) -> bool:
        return await self.hw.power_with(dev, target, action)

    def fence_history(self) -> list[dict[str, object]]:
        """The latest fences this node ran (who, whom, device, result, durations), oldest
        first, for ``appliance status``."""
        return [{**r.as_dict(), "summary": r.describe()} for r in self.hw.fencer.records]

    async def _fence(self, node_id: int) -> None:
        target = self.cfg.node_by_id(node_id)
        record = await self.hw.fence(target)
        ok = record.ok
        why = "" if ok else f" ({record.error})"
        self._log(
            "fence of node %d (%s): %s%s", node_id, target.name, "done" if ok else "FAILED", why
        )
        self.engine.fence_result(node_id, ok, self.loop.time())
        self.driver.poke()

    # -- the client gateway ------------------------------------------------------------------

    def node_info(self) -> dict[str, str]:
        """This node's INFO replication fields, with its datagram counters."""
        fields = self.local_replication()
        status = self.engine.status()
        fields["datagrams_accepted"] = str(status["accepted"])
        # Our own, returned by multicast loopback (and anything forged to look like ours).
        fields["datagrams_looped_back"] = str(status["looped_back"])
        # Other backups' confirmations, dropped unread by a backup that awaits no reply.
        fields["datagrams_acks_skipped"] = str(status["acks_skipped"])
        # This node's gateway's requests its own replica, as primary, ordered and carried on
        # whole in its ORDERs: never multicast on their own.
        fields["datagrams_requests_in_order"] = str(status["requests_in_order"])
        # Whether a backup awaiting no reply can have the kernel drop the other backups'
        # confirmations (never while a command of this node's clients, this one too, is open).
        fields["acks_filter"] = "available" if self.driver.filter_acks else "unavailable"
        rejected = status["rejected"]
        assert isinstance(rejected, dict)
        fields["datagrams_rejected"] = str(sum(rejected.values()))
        for reason, count in sorted(rejected.items()):
            fields[f"datagrams_rejected_{reason}"] = str(count)
        return fields

    def _provide_snapshot(self, snapshot_id: int) -> None:
        """Serialise and hash the state for a joiner off the event loop, then hand it over.

        The state is captured now, at the index the engine asked for: a later delivery in the
        snapshot would be applied twice by the joiner. Encoding 100,000 keys takes about
        100 ms. In one go it held the heartbeat wire flat long enough for the peers to fence
        this primary; in a worker thread it still held the loop through each long C call (the
        interpreter lock is shared); in 2 ms steps on the loop every write during the join
        waited behind a step at each of its passes. A forked child
        (:mod:`appliance.node.snapshot_child`) leaves the loop free. Where there is no
        ``fork()`` (or it fails) the steps run on the loop: one per iteration, the state in
        parts and its SHA-256 computed a megabyte per step, so that no single copy or hash of
        the whole 12 MB (10-20 ms) is left for the end.
        """
        if self.fork_snapshots:
            try:
                child = ForkedSnapshot(
                    self.loop,
                    # In the child, whose memory is the state as of the fork: no copy needed.
                    lambda: drain(
                        self._snapshot_and_digest(snapshot_id, self.replicator.snapshot_steps())
                    ),
                    lambda result: self._snapshot_encoded(snapshot_id, result),
                )
            except OSError as exc:
                log.warning("snapshot %d: no child to encode it (%s)", snapshot_id, exc)
            else:
                self.snapshot_children[snapshot_id] = child
                return
        steps = self._snapshot_and_digest(snapshot_id, self.replicator.snapshot_steps())

        def step() -> None:
            try:
                next(steps)
            except StopIteration as done:
                if done.value is not None:
                    self._snapshot_encoded(snapshot_id, done.value)
                return
            except Exception as exc:
                log.error("snapshot %d for a joiner failed: %r", snapshot_id, exc)
                return
            self.loop.call_soon(step)

        self.loop.call_soon(step)

    def _snapshot_and_digest(
        self, snapshot_id: int, state: Generator[None, None, tuple[bytes, ...]]
    ) -> Generator[None, None, tuple[list[bytes], bytes] | None]:
        """The state in parts and the offer's digest; None if the admission ended meanwhile.

        ``state`` has captured the state already (``Replicator.snapshot_steps``); this only
        finishes encoding it."""
        parts = yield from state
        head = self.engine.snapshot_head(snapshot_id, sum(map(len, parts)))
        if head is None:
            return None
        digest = yield from sha256_steps((head, *parts))
        return list(parts), digest

    def _snapshot_encoded(self, snapshot_id: int, result: SnapshotResult) -> None:
        self.snapshot_children.pop(snapshot_id, None)
        if isinstance(result, str):
            log.error("snapshot %d for a joiner failed: %s", snapshot_id, result)
            return
        parts, digest = result
        self.engine.provide_snapshot(snapshot_id, parts, self.loop.time(), digest)
        self.driver.poke()

    def _restore(self, index: int, state: bytes) -> None:
        """Load a snapshot in steps of about 1 ms, one per loop iteration.

        In one call, 100,000 keys held this joiner's loop 60-130 ms: no heartbeat left (its
        peers saw a flat wire), and the datagrams queued meanwhile made a backlog it then
        caught up on while the primary held its ordering to admit it, which is what the
        writes made during a join waited for. Inputs delivered during the steps are applied
        after the last one (``Replicator.begin_restore``); only then does the engine report
        the snapshot installed (``restored``), so the primary admits this node once it can
        act on, and lead with, everything it acknowledges: a member that took over with
        inputs still held would number its replies after ones it had not produced yet.
        """
        self.replicator.begin_restore(state)
        restoring = self.restoring is not None
        self.restoring = (index, self.loop.time())
        if restoring:
            return  # the steps already scheduled go on with this snapshot

        heard = [self.driver.datagrams_in, self.loop.time()]

        def step() -> None:
            now = self.loop.time()
            if self.driver.datagrams_in != heard[0] and now < heard[1] + RESTORE_MAX_DEFER:
                # The group spoke since the last step: the loop reads one datagram per
                # iteration, so it drains the socket first. Stepping regardless, the repairs
                # this joiner asked for queued behind its steps, it asked again, the primary
                # resent them, and the backlog only cleared once the restore was done.
                heard[0] = self.driver.datagrams_in
                self.loop.call_soon(step)
                return
            done = self.replicator.restore_step(now)
            heard[:] = [self.driver.datagrams_in, self.loop.time()]
            if not done:
                self.loop.call_soon(step)
                return
            if self.restoring is not None:
                index, started = self.restoring
                ms = (self.loop.time() - started) * 1000
                held = self.replicator.held_last
                self._log(
                    "restored the snapshot of index %d in %.0f ms (and the %d inputs "
                    "delivered meanwhile)",
                    index,
                    ms,
                    held,
                )
            self.restoring = None
            self.engine.restored(self.loop.time())  # the primary may admit us now
            self.driver.poke()

        self.loop.call_soon(step)

    def _reply(self, seq: int, payload: bytes) -> None:
        entry = self.pending.pop(seq, None)
        if entry is None:
            return  # its connection closed meanwhile
        client, slot = entry
        if slot.local_info:
            payload = with_local_replication(payload, self.node_info())
        slot.reply = client.session.shape(payload)
        client.flush()

    def _connection(self) -> _Connection:
        return _Connection(self)

    def _accept(self, transport: asyncio.Transport) -> _Client | None:
        """A new client connection, or None (told why and closed) when there are too many."""
        if len(self.clients) >= self.cfg.clients.max_clients:
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            return None
        self.client_ids += 1
        client = _Client(transport, ClientSession(self.client_ids, self.cfg.clients.requirepass))
        self.clients.add(client)
        return client

    def _handle(self, client: _Client, argv: list[bytes]) -> bool:
        """One command of a client: answered here, or submitted (True) to be ordered."""
        if argv[0].upper() == b"QUIT":
            client.local(b"+OK\r\n")
            client.closing = True
            return False
        answer = client.session.answer(argv)
        if answer is not None:
            client.local(answer)
            return False
        if _is_debug_digest(argv):
            client.local(encode(self.replicator.digest().hex().encode()))
            return False
        payload = encode(list[RespValue](argv))
        if len(payload) > self.max_payload:
            client.local(f"-ERR request too large (max {self.max_payload} bytes)\r\n".encode())
            return False
        seq = self.engine.submit(payload)
        slot = client.expect()
        slot.local_info = argv[0].upper() == b"INFO" and wants_replication(argv)
        self.pending[seq] = (client, slot)
        return True

    def _forget(self, client: _Client) -> None:
        """The connection is gone: its awaited replies have nobody to go to."""
        client.closed = True
        self.clients.discard(client)
        for seq in [s for s, (c, _) in self.pending.items() if c is client]:
            del self.pending[seq]


class _Connection(asyncio.Protocol):
    """One client's TCP connection: its commands parsed and submitted as its bytes arrive.

    A protocol, not a stream reader in a task: a request is submitted from the callback that
    read it, instead of waking a coroutine on a later turn of the loop (on the critical path
    of every write). What a coroutine got from ``await`` it gets from the loop here: a long
    pipeline is handled ``PIPELINE_SLICE`` commands per turn, reading pauses while the
    client's replies back up in the kernel (``pause_writing``), and a connection closing
    after QUIT or a protocol error waits up to ``CLOSE_GRACE`` for its earlier replies.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.parser = RequestParser(max_request=agent.cfg.clients.max_request_bytes)
        self.client: _Client | None = None
        self.transport: asyncio.Transport | None = None
        self.paused: set[str] = set()
        """Why reading is paused: "slice" (a pipeline's rest is due next turn), "writes"
        (the replies back up), "closing"."""
        self.grace: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client = self.agent._accept(self.transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.closing:
            return
        self.parser.feed(data)
        if "slice" not in self.paused:
            self._run()

    def _run(self) -> None:
        client = self.client
        if client is None or client.closed:
            return
        agent = self.agent
        submitted = 0
        try:
            while not client.closing and (argv := self.parser.next_command()) is not None:
                if agent._handle(client, argv):
                    submitted += 1
                    if submitted == PIPELINE_SLICE:  # timers, heartbeats, other clients
                        agent.driver.poke()
                        self._pause("slice")
                        agent.loop.call_soon(self._next_slice)
                        return
        except ProtocolError as err:
            self._fail(client, err)
        if submitted:
            agent.driver.poke()
        if client.closing:
            self._closing(client)

    def _next_slice(self) -> None:
        self._resume("slice")
        try:
            self._run()
        except Exception:  # from the loop, not a read: nobody else would close it
            log.exception("client connection failed; closed")
            if self.transport is not None:
                self.transport.abort()

    def _fail(self, client: _Client, err: ProtocolError) -> None:
        client.local(protocol_error_reply(err))
        client.closing = True
        self._closing(client)

    def _closing(self, client: _Client) -> None:
        """After QUIT or a protocol error: read no more; close once the replies are out
        (``_Client.flush``), or after the grace."""
        self._pause("closing")
        client.flush()  # closes at once when no reply is awaited
        if client.slots and self.grace is None:
            # Then aborted, not closed: close would wait for a client that stopped reading.
            self.grace = self.agent.loop.call_later(CLOSE_GRACE, client.transport.abort)

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused.add(why)

    def _resume(self, why: str) -> None:
        self.paused.discard(why)
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._pause("writes")

    def resume_writing(self) -> None:
        self._resume("writes")

    def eof_received(self) -> bool:
        return False  # the client is done: close (its awaited replies are dropped)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.grace is not None:
            self.grace.cancel()
        if self.client is not None:
            self.agent._forget(self.client)


# -- the command line ----------------------------------------------------------------------


def agent_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="appliance agent", description="run this node's agent")
    p.add_argument("--config", required=True, help="the cluster file (TOML)")
    p.add_argument("--key", help="the cluster key file (default: the config's key_file)")
    p.add_argument("--node", help="this node's name (default: the hostname)")
    p.add_argument("--state-dir", type=Path, default=None, help=f"default {DEFAULT_STATE_DIR}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument(
        "--event-loop",
        default=None,
        help=f"asyncio (default) or uvloop (optional package); default ${event_loop.ENV}",
    )
    p.add_argument(
        "--snapshot-encoder",
        default=None,
        help="where a primary encodes a joiner's snapshot: child (a forked process, the "
        f"default) or loop (in steps on the event loop); default ${snapshot_child.ENV}",
    )
    args = p.parse_args(argv)
    try:
        loop = event_loop.choose(args.event_loop)
        encoder = snapshot_child.choose_encoder(args.snapshot_encoder)
    except ValueError as e:
        print(f"appliance agent: {e}", file=sys.stderr)
        return 2
    level = logging.getLevelName(str(args.log_level).upper())
    if not isinstance(level, int):
        print(f"appliance agent: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        cfg = load_config(args.config)
        key = load_key(args.key if args.key is not None else cfg.key_file)
        node = cfg.node(args.node)
    except ConfigError as e:
        print(f"appliance agent: {e}", file=sys.stderr)
        return 2
    agent = Agent(cfg, key, node, args.state_dir, encoder)
    try:
        return event_loop.run(agent.run(), loop)
    except (OSError, ValueError) as e:
        print(f"appliance agent: {e}", file=sys.stderr)
        return 1
