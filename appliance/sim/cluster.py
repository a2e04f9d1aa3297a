"""A simulated cluster: N protocol engines, a network, a power strip, clients and a nemesis.

The simulator is the host of every :class:`NodeEngine`: it feeds datagrams and timers with the
simulated clock, applies delivered operations to a tiny replicated log service, answers fence
requests by cutting simulated power (only when the fencing node still reaches its witness), and
checks the invariants after every step:

* S1: never two live nodes acting as primary at once;
* prefix agreement: the logs of live view members are prefixes of one another;
* no acknowledged request is lost: a request whose reply a client received (and which the
  gateway saw acknowledged) stays at its index in every log that reaches that index, and every
  node that becomes primary holds all of them;
* state transfer goes over a simulated point-to-point channel (the stream transfer the agent
  uses): a fetch takes time in proportion to the snapshot's size and fails when either end
  loses power or restarts, or the two are partitioned, before it completes;
* L1/L2/L3 at the end: after the faults stop and everything is healed and powered on, one
  primary, every node in its view, identical logs, every request stable exactly once.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.protocols.config import ProtocolConfig, StateTransfer, is_gateway_group
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import (
    Delivered,
    FenceRequested,
    HandoverFinished,
    ReplyReceived,
    RequestsStable,
    RoleChanged,
    SnapshotInstalled,
    SnapshotOffered,
    SnapshotReady,
    SnapshotReleased,
    SnapshotRequested,
    StateReset,
    ViewInstalled,
)
from appliance.protocols.messages import Role
from appliance.protocols.replication import Replicator, Style
from appliance.protocols.wire.fields import Reader, Writer
from appliance.service.app import KVApplication, replication_info
from appliance.service.resp import encode
from appliance.sim.network import SimNetwork


def kv_request(rng: random.Random, tag: str) -> bytes:
    """A random command of the KV workload: writes, reads, TTLs and random keys."""
    key = f"k{rng.randrange(12)}"
    roll = rng.random()
    if roll < 0.35:
        argv = ["SET", key, tag]
    elif roll < 0.45:
        argv = ["SET", key, tag, "PX", str(rng.randrange(20, 400))]
    elif roll < 0.55:
        argv = ["INCR", f"c{rng.randrange(3)}"]
    elif roll < 0.62:
        argv = ["APPEND", key, "+"]
    elif roll < 0.70:
        argv = ["PEXPIRE", key, str(rng.randrange(10, 300))]
    elif roll < 0.75:
        argv = ["RANDOMKEY"]
    elif roll < 0.80:
        argv = ["DEL", key]
    elif roll < 0.90:
        argv = ["GET", key]
    else:
        argv = ["PTTL", key]
    return encode([a.encode() for a in argv])


class InvariantViolation(AssertionError):
    pass


def encode_log(log: list[bytes]) -> bytes:
    w = Writer().u32(len(log))
    for p in log:
        w.blob(p)
    return w.getvalue()


def decode_log(data: bytes) -> list[bytes]:
    r = Reader(data)
    out = [r.blob() for _ in range(r.count(1 << 24))]
    r.finish()
    return out


def request_id(group: int, conn_id: int, seq: int) -> bytes:
    """A request's identity: its gateway connection and sequence number on it."""
    return b"%d:%d:%d" % (group, conn_id, seq)


def chain_hash(prev: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(prev + payload, digest_size=8).digest()


@dataclass
class SimNode:
    node: int
    incarnation: int = 0
    engine: NodeEngine | None = None
    paused: bool = False
    inbox: list[bytes] = field(default_factory=list)
    log: list[bytes] = field(default_factory=list)
    chain: list[bytes] = field(default_factory=lambda: [b""])
    timer_at: float | None = None
    timer_gen: int = 0
    requests: dict[int, bytes] = field(default_factory=dict)
    replies: dict[int, bytes] = field(default_factory=dict)
    replicator: Replicator | None = None
    stable: int = 0
    next_request: int = 0
    power_on_at: float | None = None
    snapshots: dict[int, SnapshotReady] = field(default_factory=dict)
    """Snapshots this node's host serves to joiners (stream transfer), by id."""
    fetch_gen: int = 0
    """Bumped on every offer: a fetch still running for an older offer is abandoned."""
    restore_stepping: bool = False
    """A stepped restore's next step is scheduled."""

    @property
    def alive(self) -> bool:
        return self.engine is not None


@dataclass
class SimStats:
    requests: int = 0
    acknowledged: int = 0
    primary_changes: int = 0
    fences: int = 0
    crashes: int = 0
    step_downs: int = 0
    handovers: int = 0
    """Hand-overs that completed (the successor became primary with the old one's vote)."""
    datagrams: int = 0
    fetches: int = 0
    fetch_failures: int = 0


class SimCluster:
    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        cfg: ProtocolConfig | None = None,
        trace: Callable[[str], None] | None = None,
        style: Style | None = None,
        state_transfer: StateTransfer = StateTransfer.STREAM,
    ) -> None:
        """``style`` None: a bare replicated log; otherwise the KV service replicated in it.
        ``state_transfer``: stream (the agent's) unless a test asks for the multicast one."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.style = style
        ids = tuple(range(1, nodes + 1))
        self.cfg = cfg or ProtocolConfig(
            cluster_id=0xC1,
            nodes=ids,
            key=b"sim-key-" + bytes([7] * 24),
            annexed=style is not None,
            state_transfer=state_transfer,
            host_confirms_restore=True,  # as the agent: restored() once the state is loaded
        )
        self.net = SimNetwork(self.rng)
        self.now = 0.0
        self.queue: list[tuple[float, int, str, Any]] = []
        self.counter = 0
        self.nodes = {n: SimNode(n) for n in self.cfg.nodes}
        self.trace = trace
        self.stats = SimStats()
        self.acked: dict[bytes, int | None] = {}
        """Acknowledged requests (gateway group:connection:seq) and, when known, their index."""
        self.client_rate = 40.0  # requests per second per node
        self.clients_on = True
        self.fence_latency = 0.01
        self.power_hold = 0.2
        self.retired: Counter[str] = Counter()  # messages sent by engines since powered off
        self.fence_cuts_power = True
        """False emulates a fence device that reports success but left the node running."""
        self.fence_log: list[tuple[float, int, int]] = []  # (time, fencer, target)
        self.fetch_latency = 0.002
        self.fetch_rate = 2e5
        """Point-to-point channel: bytes per second (a slow link, so that faults land mid-way)."""
        self.restore_stall = 0.0
        """Seconds a joiner's host stands still loading an installed snapshot (its loop
        blocked: no heartbeat, no datagram handled). A 100,000-key restore takes about 0.25 s."""
        self.restore_step = 0.0
        """Seconds between the steps of a joiner's restore, as the agent restores (0: in one
        call). Its host goes on handling datagrams in between; the inputs delivered meanwhile
        wait in the Replicator. Large enough that faults land while a backup, already
        admitted, is still restoring."""
        self.fetch_reset = 0.1
        """Chance that a fetch breaks half-way (a reset connection), on top of the faults."""
        self.fetch_faults = 0
        """The next this many fetches break half-way, whatever the chance (for tests)."""
        self.role_log: list[tuple[float, int, Role]] = []
        self.handover_log: list[tuple[float, int, HandoverFinished]] = []
        """Outcomes of graceful hand-overs: (time, old primary, result)."""
        for n in self.nodes:
            self.at(self.rng.uniform(0, 0.05), "power_on", n)

    # -- scheduling ----------------------------------------------------------------------

    def at(self, t: float, kind: str, data: Any) -> None:
        self.counter += 1
        heapq.heappush(self.queue, (t, self.counter, kind, data))

    def log(self, msg: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now:9.4f} {msg}")

    def run_until(self, t_end: float) -> None:
        while self.queue and self.queue[0][0] <= t_end:
            t, _, kind, data = heapq.heappop(self.queue)
            self.now = max(self.now, t)
            getattr(self, "_on_" + kind)(data)
        self.now = max(self.now, t_end)

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Run until ``pred()`` holds (checked after every event) or ``timeout`` passes."""
        deadline = self.now + timeout
        while not pred():
            if not self.queue or self.queue[0][0] > deadline:
                self.now = max(self.now, deadline)
                return pred()
            t, _, kind, data = heapq.heappop(self.queue)
            self.now = max(self.now, t)
            getattr(self, "_on_" + kind)(data)
        return True

    def messages_sent(self) -> Counter[str]:
        """Datagrams sent by type, over every node and incarnation so far."""
        total = Counter(self.retired)
        for s in self.nodes.values():
            if s.engine is not None:
                total.update(s.engine.out.sent_by_type)
        return total

    def role(self, node: int) -> Role | None:
        eng = self.nodes[node].engine
        return None if eng is None else eng.role

    def formed(self) -> bool:
        """One primary whose view holds every live node, all of them backups or primary."""
        prim = self.primaries()
        if len(prim) != 1:
            return False
        eng = self.nodes[prim[0]].engine
        assert eng is not None
        view = eng.member.view
        alive = {n for n, s in self.nodes.items() if s.alive}
        return (
            view is not None
            and set(view.nodes) == alive
            and all(self.role(n) in (Role.PRIMARY, Role.BACKUP) for n in alive)
            and eng.member.confirming is None
        )

    # -- power ---------------------------------------------------------------------------

    def _on_power_on(self, node: int) -> None:
        sn = self.nodes[node]
        if sn.alive:
            return
        sn.incarnation += 1
        sn.engine = NodeEngine(self.cfg, node, sn.incarnation, self.now)
        sn.paused = False
        sn.restore_stepping = False
        sn.inbox.clear()
        sn.log = []
        sn.chain = [b""]
        sn.requests.clear()
        sn.replies.clear()
        sn.stable = 0
        sn.power_on_at = None
        sn.snapshots.clear()
        if self.style is not None:
            info = replication_info(sn.engine)
            sn.replicator = Replicator(
                sn.engine,
                lambda det: KVApplication(det, info),
                self.style,
                clock=lambda: 1_700_000_000_000 + int(self.now * 1000),
                entropy=self.rng.randbytes,
            )
        self.log(f"node {node} powered on (incarnation {sn.incarnation})")
        self._step(sn)
        self._schedule_client(sn)

    def power_off(self, node: int, why: str) -> None:
        sn = self.nodes[node]
        if not sn.alive:
            return
        self.stats.crashes += 1
        self.log(f"node {node} powered off: {why}")
        assert sn.engine is not None
        self.retired.update(sn.engine.out.sent_by_type)
        sn.engine = None
        sn.paused = False
        sn.inbox.clear()
        sn.snapshots.clear()
        sn.timer_gen += 1

    def step_down(self, node: int) -> int | None:
        """Ask ``node`` to hand its primary role over gracefully; its successor, or None if
        the engine refused (not primary, alone, already handing over, or paused)."""
        sn = self.nodes[node]
        if sn.engine is None or sn.paused:
            return None
        try:
            successor = sn.engine.step_down(self.now)
        except ValueError as e:
            self.log(f"node {node} cannot step down: {e}")
            return None
        self.stats.step_downs += 1
        self.log(f"node {node} steps down in favour of node {successor}")
        self._step(sn)
        return successor

    def power_cycle(self, node: int, why: str) -> None:
        self.power_off(node, why)
        sn = self.nodes[node]
        if sn.power_on_at is None:
            sn.power_on_at = self.now + self.power_hold
            self.at(sn.power_on_at, "power_on", node)

    # -- network -------------------------------------------------------------------------

    def _on_deliver(self, data: tuple[int, int, bytes]) -> None:
        node, _, datagram = data
        sn = self.nodes[node]
        if sn.engine is None:
            return
        if sn.paused:
            sn.inbox.append(datagram)
            return
        if sn.engine.receive_datagram(datagram, self.now):
            self._step(sn)  # else nothing became due: the agent's driver does not step either

    def _on_timer(self, data: tuple[int, int]) -> None:
        node, gen = data
        sn = self.nodes[node]
        if sn.engine is None or sn.paused or gen != sn.timer_gen:
            return
        sn.timer_at = None
        sn.engine.handle_timer(self.now)
        self._step(sn)

    def _step(self, sn: SimNode) -> None:
        """Drain a node's output and events until it is quiet; re-arm its timer; check."""
        for _ in range(100):
            eng = sn.engine
            if eng is None:
                return
            out = eng.datagrams_to_send(self.now)
            for d in out:
                self.stats.datagrams += 1
                dests = [n for n, s in self.nodes.items() if s.alive and n != sn.node]
                for t, dst in self.net.arrivals(sn.node, dests, self.now):
                    self.at(t, "deliver", (dst, sn.incarnation, d))
            had_events = False
            while (ev := eng.next_event()) is not None:
                had_events = True
                self._handle_event(sn, ev)
                if sn.engine is not eng:
                    return
            if not out and not had_events:
                break
        eng = sn.engine
        if eng is None:
            return
        t = max(eng.get_timer(), self.now)
        if sn.timer_at != t:
            sn.timer_gen += 1
            sn.timer_at = t
            self.at(t, "timer", (sn.node, sn.timer_gen))
        self.check(sn)

    # -- the host side of the protocol ---------------------------------------------------

    def _handle_event(self, sn: SimNode, ev: object) -> None:
        eng = sn.engine
        assert eng is not None
        if isinstance(ev, Delivered):
            if ev.index != len(sn.log) + 1:
                raise InvariantViolation(
                    f"node {sn.node} delivered index {ev.index} after {len(sn.log)} entries"
                )
            ident = request_id(ev.src_group, ev.conn_id, ev.seq)
            sn.log.append(ident)
            sn.chain.append(chain_hash(sn.chain[-1], ident))
            at = self.acked.get(ident)
            if at is not None and at != ev.index:
                raise InvariantViolation(
                    f"node {sn.node} delivered acknowledged request {ident!r} at index "
                    f"{ev.index}, not at {at}"
                )
            if sn.replicator is not None:
                sn.replicator.handle(ev, self.now)
            elif is_gateway_group(ev.src_group):
                reply = ev.payload + b"@" + str(ev.index).encode()
                eng.send(ev.src_group, ev.conn_id, reply, after=ev.index)
        elif isinstance(ev, SnapshotRequested):
            w = Writer().blob(encode_log(sn.log[: ev.index]))
            w.blob(sn.replicator.snapshot() if sn.replicator is not None else b"")
            eng.provide_snapshot(ev.snapshot_id, w.getvalue(), self.now)
        elif isinstance(ev, SnapshotReady):
            sn.snapshots[ev.snapshot_id] = ev
        elif isinstance(ev, SnapshotReleased):
            sn.snapshots.pop(ev.snapshot_id, None)
        elif isinstance(ev, SnapshotOffered):
            self._start_fetch(sn, ev)
        elif isinstance(ev, SnapshotInstalled):
            r = Reader(ev.app_state)
            sn.log, app_state = decode_log(r.blob()), r.blob()
            r.finish()
            if sn.replicator is not None and self.restore_step > 0:
                sn.replicator.begin_restore(app_state)
                if not sn.restore_stepping:
                    sn.restore_stepping = True
                    self.at(self.now + self.restore_step, "restore_step", (sn.node, sn.incarnation))
            else:
                if sn.replicator is not None:
                    sn.replicator.restore(app_state)
                assert sn.engine is not None
                sn.engine.restored(self.now)
            sn.chain = [b""]
            for ident in sn.log:
                sn.chain.append(chain_hash(sn.chain[-1], ident))
            if self.restore_stall > 0:
                self.pause(sn.node)
                self.at(self.now + self.restore_stall, "thaw", sn.node)
        elif isinstance(ev, StateReset):
            self.log(f"node {sn.node} reset: {ev.reason}")
            sn.log = []
            sn.chain = [b""]
            if sn.replicator is not None:
                sn.replicator.handle(ev, self.now)
        elif isinstance(ev, FenceRequested):
            self._fence(sn, ev)
        elif isinstance(ev, RoleChanged):
            self.log(f"node {sn.node} -> {ev.role.name}: {ev.reason}")
            self.role_log.append((self.now, sn.node, ev.role))
            if ev.role is Role.PRIMARY:
                self.stats.primary_changes += 1
                have = set(sn.log)
                missing = [i for i in self.acked if i not in have]
                if missing:
                    raise InvariantViolation(
                        f"node {sn.node} became primary without acknowledged requests "
                        f"{missing[:5]} (log has {len(sn.log)})"
                    )
        elif isinstance(ev, ViewInstalled):
            self.log(f"node {sn.node} installed {ev.view.describe()}")
        elif isinstance(ev, HandoverFinished):
            outcome = "completed" if ev.ok else "failed"
            self.log(f"node {sn.node} hand-over to node {ev.successor} {outcome}: {ev.reason}")
            self.handover_log.append((self.now, sn.node, ev))
            if ev.ok:
                self.stats.handovers += 1
        elif isinstance(ev, ReplyReceived):
            sn.replies[ev.seq] = ev.payload
            self._acknowledge(sn)
        elif isinstance(ev, RequestsStable):
            sn.stable = ev.seq
            self._acknowledge(sn)

    def _acknowledge(self, sn: SimNode) -> None:
        """A client sees its request done once the gateway releases the reply (committed)."""
        eng = sn.engine
        assert eng is not None
        for seq in list(sn.replies):
            reply = sn.replies.pop(seq)
            request = sn.requests.pop(seq, None)
            if request is None:
                raise InvariantViolation(f"node {sn.node} got reply {reply!r} for no request")
            index: int | None = None
            if self.style is None:
                payload, _, idx = reply.rpartition(b"@")
                if payload != request:
                    raise InvariantViolation(
                        f"node {sn.node} got reply {reply!r} for request {seq} ({request!r})"
                    )
                index = int(idx)
            elif not reply.startswith((b"+", b"-", b":", b"$", b"*")):
                raise InvariantViolation(f"node {sn.node} got a non-RESP reply {reply!r}")
            ident = request_id(eng.gateway.group, eng.gateway.conn_id, seq)
            if ident in self.acked:
                raise InvariantViolation(f"request {ident!r} acknowledged twice")
            self.acked[ident] = index
            self.stats.acknowledged += 1

    def _fence(self, sn: SimNode, ev: FenceRequested) -> None:
        requester, inc, target = sn.node, sn.incarnation, ev.node
        healthy = self.net.reaches_witness(requester)
        self.log(f"node {requester} fences node {target} ({ev.reason}); healthy={healthy}")
        self.at(self.now + self.fence_latency, "fence_done", (requester, inc, target, healthy))

    def _on_fence_done(self, data: tuple[int, int, int, bool]) -> None:
        requester, inc, target, healthy = data
        sn = self.nodes[requester]
        if sn.engine is None or sn.incarnation != inc:
            return  # the request never left a node that lost its power first
        if healthy:
            self.stats.fences += 1
            self.fence_log.append((self.now, requester, target))
            if self.fence_cuts_power:
                self.power_cycle(target, f"fenced by node {requester}")
        if sn.paused:
            self.at(self.now + 0.001, "fence_done", data)
            return
        sn.engine.fence_result(target, healthy, self.now)
        self._step(sn)

    # -- the point-to-point state channel ------------------------------------------------

    def _start_fetch(self, sn: SimNode, ev: SnapshotOffered) -> None:
        sn.fetch_gen += 1
        self.stats.fetches += 1
        took = self.fetch_latency + ev.size / self.fetch_rate
        broken = self.fetch_faults > 0 or self.rng.random() < self.fetch_reset
        if self.fetch_faults > 0:
            self.fetch_faults -= 1
        key = (sn.node, sn.incarnation, sn.fetch_gen, ev, broken)
        self.at(self.now + (took / 2 if broken else took), "fetch_done", key)

    def _on_fetch_done(self, data: tuple[int, int, int, SnapshotOffered, bool]) -> None:
        node, inc, gen, ev, broken = data
        sn = self.nodes[node]
        if sn.engine is None or sn.incarnation != inc or sn.fetch_gen != gen:
            return  # the joiner restarted, or a newer offer replaced this fetch
        src = self.nodes[ev.source_node]
        if sn.paused or (src.paused and not broken):
            self.at(self.now + 0.001, "fetch_done", data)  # a stalled stream waits
            return
        snap = src.snapshots.get(ev.snapshot_id)
        why = ""
        if broken:
            why = "connection reset mid-way"
        elif src.engine is None or src.incarnation != ev.source_incarnation:
            why = f"node {ev.source_node} lost power"
        elif not self.net.connected(node, ev.source_node):
            why = f"node {ev.source_node} unreachable"
        elif snap is None or (snap.joiner, snap.joiner_incarnation) != (node, inc):
            why = f"node {ev.source_node} does not serve snapshot {ev.snapshot_id} to us"
        if why or snap is None:
            self.stats.fetch_failures += 1
            self.log(f"node {node} failed to fetch snapshot {ev.snapshot_id}: {why}")
            sn.engine.state_fetch_failed(ev.snapshot_id, why, self.now)
        else:
            self.log(f"node {node} fetched snapshot {ev.snapshot_id} ({ev.size} bytes)")
            sn.engine.install_state(ev.snapshot_id, snap.blob, self.now)
        self._step(sn)

    # -- clients -------------------------------------------------------------------------

    def _schedule_client(self, sn: SimNode) -> None:
        if self.clients_on:
            t = self.now + self.rng.expovariate(self.client_rate)
            self.at(t, "client", (sn.node, sn.incarnation))

    def _on_client(self, data: tuple[int, int]) -> None:
        node, inc = data
        sn = self.nodes[node]
        if sn.engine is None or sn.incarnation != inc or not self.clients_on:
            return
        if not sn.paused and sn.engine.gateway.in_flight + sn.engine.gateway.backlog < 64:
            sn.next_request += 1
            payload = (
                f"n{node}.{inc}.r{sn.next_request}".encode()
                if self.style is None
                else kv_request(self.rng, f"n{node}.{inc}.r{sn.next_request}")
            )
            seq = sn.engine.submit(payload)
            sn.requests[seq] = payload
            self.stats.requests += 1
            self._step(sn)
        self._schedule_client(sn)

    # -- faults --------------------------------------------------------------------------

    def pause(self, node: int) -> None:
        sn = self.nodes[node]
        if sn.alive and not sn.paused:
            self.log(f"node {node} paused")
            sn.paused = True

    def _on_restore_step(self, data: tuple[int, int]) -> None:
        node, incarnation = data
        sn = self.nodes[node]
        if sn.engine is None or sn.incarnation != incarnation or sn.replicator is None:
            return
        if sn.paused or not sn.replicator.restore_step(self.now):
            self.at(self.now + self.restore_step, "restore_step", data)
            return
        sn.restore_stepping = False
        self.log(f"node {node} restored its snapshot")
        sn.engine.restored(self.now)  # only now does it report the snapshot installed
        self._step(sn)

    def _on_thaw(self, node: int) -> None:
        sn = self.nodes[node]
        if sn.engine is None or not sn.paused:
            return
        self.log(f"node {node} thawed with {len(sn.inbox)} datagrams waiting")
        sn.paused = False
        inbox, sn.inbox = sn.inbox, []
        for d in inbox:
            eng = self.nodes[node].engine  # a fence may power it off meanwhile
            if eng is None:
                return
            eng.receive_datagram(d, self.now)
            self._step(sn)
        eng = self.nodes[node].engine
        if eng is not None:
            eng.handle_timer(self.now)
            self._step(sn)

    def _on_call(self, fn: Callable[[], None]) -> None:
        fn()

    def primaries(self) -> list[int]:
        return [
            n
            for n, s in self.nodes.items()
            if s.engine is not None and s.engine.role is Role.PRIMARY
        ]

    def holders(self) -> list[int]:
        """Live nodes that are members of a view (they hold every committed entry)."""
        return [
            n
            for n, s in self.nodes.items()
            if s.engine is not None and s.engine.role in (Role.PRIMARY, Role.BACKUP, Role.CANDIDATE)
        ]

    # -- invariants ----------------------------------------------------------------------

    def check(self, sn: SimNode | None = None) -> None:
        prim = self.primaries()
        if len(prim) > 1:
            raise InvariantViolation(f"S1: nodes {prim} are primary at the same time")
        members = [
            s
            for s in self.nodes.values()
            if s.engine is not None and s.engine.role in (Role.PRIMARY, Role.BACKUP)
        ]
        for a in members:
            for b in members:
                if a.node < b.node:
                    k = min(len(a.log), len(b.log))
                    if a.chain[k] != b.chain[k]:
                        raise InvariantViolation(
                            f"prefix agreement: nodes {a.node} and {b.node} differ within the "
                            f"first {k} entries"
                        )

    def check_final(self) -> None:
        prim = self.primaries()
        if len(prim) != 1:
            states = {n: s.engine.status() if s.engine else "off" for n, s in self.nodes.items()}
            raise InvariantViolation(f"L1: {len(prim)} primaries after healing: {states}")
        p = self.nodes[prim[0]]
        assert p.engine is not None
        view = p.engine.member.view
        assert view is not None
        alive = {n for n, s in self.nodes.items() if s.alive}
        if set(view.nodes) != alive:
            raise InvariantViolation(
                f"L2/L3: view {view.describe()} but live nodes are {sorted(alive)}"
            )
        for s in self.nodes.values():
            if s.engine is None:
                continue
            if s.engine.role not in (Role.PRIMARY, Role.BACKUP):
                raise InvariantViolation(f"node {s.node} is {s.engine.role.name} after healing")
            if s.log != p.log:
                raise InvariantViolation(
                    f"node {s.node} log ({len(s.log)}) differs from primary's ({len(p.log)})"
                )
        if len(set(p.log)) != len(p.log):
            raise InvariantViolation("a request was applied twice")
        have = set(p.log)
        for ident in self.acked:
            if ident not in have:
                raise InvariantViolation(f"acknowledged request {ident!r} was lost")
        if p.replicator is not None:
            digest = p.replicator.app.digest()
            for s in self.nodes.values():
                if s.replicator is not None and s.alive and s.replicator.app.digest() != digest:
                    raise InvariantViolation(
                        f"node {s.node}'s state digest differs from the primary's"
                    )
        for s in self.nodes.values():
            if s.engine is not None and s.engine.gateway.in_flight:
                raise InvariantViolation(
                    f"node {s.node}: {s.engine.gateway.in_flight} requests never became stable"
                )
