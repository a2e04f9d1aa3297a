"""One node's replica of a process group: LLMP ordering plus LDMP membership.

The primary of the group decides the total order of everything the group receives: it delivers
each input as the next index of the group's *ordered log* and piggybacks an ordering record on
whatever it sends next. Backups buffer the same inputs (every member listens on the virtual
port) and deliver exactly the primary's order, fetching by NACK whatever record or payload they
miss. Backups confirm how far they got (SecondAck); the primary's *commit* index is the lowest
point every member of the view holds, and the primary acknowledges a sender's message only once
it is committed. So a message the sender has dropped from its sent list survives any failover.

Membership is leader-determined. Every exclusion goes through the fence gate: a backup that
suspects the primary, and is next in rank, asks its host to fence the primary (cut its power)
and proposes itself only when the host reports it fenced; a primary removes a suspected backup
only after fencing it. A node that was not fenced is therefore still in the view and holds every
committed input, and a node that was fenced is off. The primary fences first; a backup waits an
extra ``rank_delay`` per rank below the primary, so the two sides of a partition do not fence
each other (unless the heartbeat wire already proves the node above is down).
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.protocols.config import (
    ProtocolConfig,
    StateTransfer,
    check_payload,
    is_gateway_group,
)
from appliance.protocols.events import (
    Committed,
    Delivered,
    Event,
    FenceRequested,
    HandoverFinished,
    RoleChanged,
    SnapshotInstalled,
    SnapshotOffered,
    SnapshotReady,
    SnapshotReleased,
    SnapshotRequested,
    StateReset,
    ViewInstalled,
)
from appliance.protocols.failure_detector import FailureDetector, Health
from appliance.protocols.ldmp.view import Member, View
from appliance.protocols.llmp.receiver import InboundConnection
from appliance.protocols.llmp.rto import RttEstimator
from appliance.protocols.llmp.sender import OutboundConnection
from appliance.protocols.messages import (
    ORDER_ENTRY_OVERHEAD,
    AcceptAck,
    AcceptBackup,
    AckKind,
    Body,
    Data,
    FirstAck,
    Handover,
    Heartbeat,
    LogEntry,
    Nack,
    NackKind,
    NewView,
    Order,
    PrimaryVote,
    ProposeBackup,
    ProposePrimary,
    RemoveBackup,
    Role,
    SecondAck,
    StateChunk,
    StateOffer,
)
from appliance.protocols.outbox import Outbox
from appliance.protocols.wire.datagram import Datagram
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer
from appliance.protocols.wire.header import Header, OrderRecord

ConnKey = tuple[int, int]  # (peer group, connection id)
MAX_PIGGYBACK = 24
MAX_REPAIR_ENTRIES = 64
MAX_REPAIR_BURST = 256
"""Entries one NACK gets back at most. A learner far behind asks again (every few ms) from
where the repair left it: resending a whole backlog for every NACK would flood the group with
the same entries, starve the primary and overflow the learner's socket, so a joiner under
steady load never caught up."""
NEVER = float("inf")
CATCH_UP_SLACK = 64
"""A joiner this many inputs or fewer behind the primary's head may be frozen in: the pause in
ordering that follows lasts about one round trip."""


def _as_parts(blob: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    """A snapshot (or its application state) given whole or in parts, as parts."""
    return (blob,) if isinstance(blob, bytes) else tuple(blob)


def _sha256(parts: Sequence[bytes]) -> bytes:
    """The digest of the parts joined, without joining them."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def _split_snapshot(parts: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The protocol state and the application state of a snapshot blob in ``parts``.

    The blob is the protocol state (small) then the application's (12 MB for 100,000 keys),
    each length-prefixed. Only the first parts are joined to read the protocol state; the
    application state is then joined once, from where it starts: parsing the whole blob
    joined would copy the 12 MB twice more on the joiner's loop.
    """
    head = b""
    i = 0
    while i < len(parts) and (len(head) < 4 or len(head) < 8 + int.from_bytes(head[:4], "big")):
        head += parts[i]
        i += 1
    r = Reader(head)
    proto = r.blob()
    size = r.u32()
    app = b"".join((head[len(head) - r.remaining :], *parts[i:]))
    if len(app) != size:
        raise WireError(
            RejectReason.TRUNCATED if len(app) < size else RejectReason.MALFORMED,
            f"snapshot application state of {len(app)} bytes, its length says {size}",
        )
    return proto, app


class Phase(enum.Enum):
    FENCING = "fencing"
    PROPOSING = "proposing"
    RECOVERING = "recovering"


class StepDownRefused(ValueError):
    """``step_down`` cannot start: not primary, no backup to hand over to, or already going."""


class HandoverPhase(enum.Enum):
    DRAINING = "draining"
    """Ordering stopped; waiting until every backup holds everything delivered and annexed."""
    OFFERED = "offered"
    """HANDOVER multicast (repeated) to the successor; waiting for its proposal."""
    VOTED = "voted"
    """No longer primary: voted for the successor's view; waiting for its NEW_VIEW."""


@dataclass(slots=True)
class StepDown:
    """A primary handing its role over to the next rank, with its consent instead of a fence."""

    started: float
    phase: HandoverPhase = HandoverPhase.DRAINING
    successor: Member | None = None
    last_sent: float = -NEVER
    voted_at: float = 0.0


@dataclass(slots=True)
class Candidacy:
    """A backup taking over: fence, propose, recover state, then announce the new view."""

    targets: set[int]
    started: float
    phase: Phase = Phase.FENCING
    number: int = 0
    members: tuple[Member, ...] = ()
    votes: dict[int, int] = field(default_factory=dict)
    last_sent: float = -NEVER
    source: int = 0
    target: int = 0
    demote: Member | None = None
    """A graceful hand-over: the old primary, who consented; it is proposed at the last rank."""


@dataclass(slots=True)
class Admission:
    """The primary's side of adding a backup: snapshot, transfer, wait for catch-up, accept."""

    joiner: Member
    snapshot_id: int
    index: int
    protocol_state: bytes
    started: float
    chunks: list[bytes] | None = None
    """Multicast transfer: the snapshot cut into STATE chunks."""
    parts: tuple[bytes, ...] | None = None
    """Stream transfer: the snapshot the host serves point-to-point, in parts."""
    digest: bytes = b""
    installed: bool = False
    installed_at: float = NEVER
    progress: tuple[int, float] = (0, -NEVER)
    """The joiner's highest acknowledged index and when it was first seen: an admission is
    abandoned only after ``join_timeout`` without progress (or before the snapshot lands)."""
    last_sent: float = -NEVER
    freeze: bool = False
    """Ordering paused until the joiner holds everything delivered (about one round trip)."""
    installed_index: int = 0
    """The joiner's delivered index when it reported the snapshot installed."""
    live: bool = False
    """The joiner acknowledged an input beyond ``installed_index``: its host is past the
    restore. Until then ordering is not frozen for it (a large restore stands the joiner
    still, and the acknowledgements it sent on installing arrive before the stall ends)."""


@dataclass(slots=True)
class Retained:
    """The log a dropped admission's joiner may still need (see ``_adopt_learner``)."""

    joiner: Member
    index: int
    """Entries after this index stay in the log."""
    since: float


@dataclass(slots=True)
class Confirming:
    """A joiner admitted to ``view``, waiting for every old member to acknowledge the view."""

    joiner: Member
    view: View
    waiting: set[int]
    last_sent: float = -NEVER


@dataclass(slots=True)
class Assembly:
    """The joiner's side of a state transfer."""

    source: Member
    snapshot_id: int
    index: int
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    last_nack: float = -NEVER


@dataclass(slots=True)
class Fetch:
    """The joiner's side of a stream transfer: an offer its host is fetching (or will retry).

    ``busy`` while the host has it in hand; a failed fetch is asked again on the primary's next
    offer (at most every ``join_retry``), until ``join_timeout`` from the first offer.
    """

    source: Member
    snapshot_id: int
    index: int
    size: int
    digest: bytes
    started: float
    requested: float
    busy: bool = True


ISSUED_KEPT = 16
"""How many of its latest snapshots a primary remembers, to adopt a learner that installed
one after its admission was dropped or replaced."""

LEARNING_LIMIT = 4
"""A learner not accepted within this many join timeouts starts over, progress or not. Its
primary may have dropped the admission (the joiner looked failed while it loaded a large
snapshot) without a word: following the live traffic then counts as progress forever."""


class GroupMember:
    """A node's replica in one process group (the replicated service)."""

    def __init__(
        self,
        cfg: ProtocolConfig,
        me: Member,
        out: Outbox,
        events: deque[Event],
        fd: FailureDetector,
        now: float,
    ) -> None:
        self.cfg = cfg
        self.me = me
        self.group = cfg.service_group
        self.out = out
        self.events = events
        self.fd = fd
        self.role = Role.JOINING
        self.view: View | None = None
        self.promised = 0
        self.voted: tuple[int, Member] | None = None
        """The proposal (number, proposer) we last voted for: a repeat gets the same answer."""
        self.max_view_seen = 0
        self.delivered = 0
        self.commit = 0
        self.log: dict[int, LogEntry] = {}
        self.pending: dict[int, OrderRecord | LogEntry] = {}
        self.annex_pending: dict[int, bytes] = {}
        self.annexed_upto = 0
        """Primary: annexes are attached (by the host) to every entry up to here."""
        self.inbound: dict[ConnKey, InboundConnection] = {}
        self.outbound: dict[ConnKey, OutboundConnection] = {}
        self.acks: dict[int, int] = {}
        self.progress: dict[int, tuple[int, float]] = {}
        self.dead: set[int] = set()
        self.fenced: set[int] = set()
        self.fence_pending: dict[int, float] = {}
        self.fence_failed: dict[int, float] = {}
        self.candidacy: Candidacy | None = None
        self.admission: Admission | None = None
        self.confirming: Confirming | None = None
        self.assembly: Assembly | None = None
        self.stepdown: StepDown | None = None
        self.offered_to: Member | None = None
        """Whom we offered the primary role in this view (a late acceptance is still honoured)."""
        self.fetch: Fetch | None = None
        self.fetches = 0
        self.fetch_failures = 0
        self.learning_from: Member | None = None
        self.learning_since = now
        self.learning_progress = (self.delivered, now)
        self.learning_snapshot = 0
        self.last_install_ack = -NEVER
        self.restoring = False
        """Our host is still loading the installed snapshot (``cfg.host_confirms_restore``)."""
        self.suspect_since: float | None = None
        self.started = now
        self.primary_hint: tuple[Member, float] | None = None
        self.announced: tuple[Member, ...] | None = None
        """Without a view: the members of the last primary announcement heard."""
        self.viewless_heard: dict[int, float] = {}
        self.viewful_heard = -NEVER
        self.last_join_sent = -NEVER
        self.last_ack_sent = 0
        self.last_ack_time = -NEVER
        self.record_sent_upto = 0
        self.last_nack: float = -NEVER
        self.known_end = 0
        self.ack_sent: dict[ConnKey, int] = {}
        self.nacks_due: dict[ConnKey, float] = {}
        self.snapshot_counter = 0
        self.issued: dict[int, Member] = {}
        """Primary: the snapshots issued in this reign and to whom (see ``_adopt_learner``)."""
        self.retained: Retained | None = None
        self.adopted = 0
        self.last_fetch_failure = ""
        self.order_stalled = 0
        self.dropped_stale_view = 0

    # ------------------------------------------------------------------ host API

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    def send(self, dst_group: int, conn_id: int, payload: bytes, after: int | None = None) -> int:
        """Application output on a virtual connection. A backup logs it without sending.

        ``after`` is the log index whose delivery produced the output (default: the last one
        delivered). The primary puts it on the wire only once that index is committed: output
        from an input a failover could lose never leaves the group, so every output a
        destination ever sees is one any future primary reproduces with the same number.
        """
        check_payload(self.cfg, payload)
        return self._outbound(dst_group, conn_id).send(
            payload, self.delivered if after is None else after
        )

    def step_down(self, now: float) -> Member:
        """Start a graceful hand-over to the next rank; returns the intended successor.

        The primary stops ordering (new inputs queue in the receive buffers), waits until every
        backup holds everything delivered, then offers the role to rank 2 with HANDOVER. Rank 2
        runs the ordinary primary change without fencing us; we vote for it and end as its
        last-ranked backup. ``HandoverFinished`` reports the outcome. Raises StepDownRefused.
        """
        if not self.is_primary or self.view is None:
            raise StepDownRefused(f"this node is not the primary (it is {self.role.name.lower()})")
        if self.stepdown is not None:
            raise StepDownRefused("a hand-over is already in progress")
        if not self.view.backups:
            raise StepDownRefused("no backup to hand over to: the group has one member")
        self.stepdown = StepDown(now)
        # A join in progress restarts with the new primary (its learner resets when rank 2
        # announces itself); a confirmation in progress is waited for.
        self.admission = None
        self._tick_stepdown(now)
        return self.view.members[1]

    @property
    def departed(self) -> bool:
        """Out of the group: no view, and a primary has since announced a view without us
        (after ``leave``, the primary removed us without a fence: we asked to rejoin)."""
        return (
            self.view is None
            and self.announced is not None
            and all(m.node != self.me.node for m in self.announced)
        )

    @property
    def handover_phase(self) -> HandoverPhase | None:
        return self.stepdown.phase if self.stepdown is not None else None

    def snapshot_head(self, snapshot_id: int, app_size: int) -> bytes | None:
        """What the snapshot's blob starts with, before an application state of ``app_size``
        bytes; None if that admission is no longer current. For a host hashing its state as
        it builds it: the digest covers this head followed by the state."""
        adm = self.admission
        if adm is None or adm.snapshot_id != snapshot_id or not self.is_primary:
            return None
        return Writer().blob(adm.protocol_state).u32(app_size).getvalue()

    def provide_snapshot(
        self,
        snapshot_id: int,
        app_state: bytes | Sequence[bytes],
        now: float,
        digest: bytes | None = None,
    ) -> None:
        app_parts = _as_parts(app_state)
        head = self.snapshot_head(snapshot_id, sum(map(len, app_parts)))
        adm = self.admission
        if head is None or adm is None:
            return
        parts = (head, *app_parts)
        if self.cfg.state_transfer is StateTransfer.STREAM:
            adm.parts = parts
            adm.digest = _sha256(parts) if digest is None else digest
            j = adm.joiner
            self.events.append(SnapshotReady(snapshot_id, j.node, j.incarnation, parts))
            self._send_offer(adm, now)
            return
        blob = b"".join(parts)
        size = self.cfg.state_chunk
        adm.chunks = [blob[i : i + size] for i in range(0, len(blob), size)] or [b""]
        self._send_chunks(adm, range(len(adm.chunks)), now)

    def install_state(
        self,
        snapshot_id: int,
        blob: bytes | Sequence[bytes],
        now: float,
        digest: bytes | None = None,
    ) -> bool:
        f = self.fetch
        if f is None or f.snapshot_id != snapshot_id or self.role is not Role.JOINING:
            return False
        parts = _as_parts(blob)
        if digest is None:
            digest = _sha256(parts)
        if sum(map(len, parts)) != f.size or digest != f.digest:
            self.state_fetch_failed(snapshot_id, "the blob does not match the offer", now)
            return False
        self._install_snapshot(f.source, snapshot_id, parts, now)
        return True

    def state_fetch_failed(self, snapshot_id: int, reason: str, now: float) -> None:
        f = self.fetch
        if f is not None and f.snapshot_id == snapshot_id and f.busy:
            f.busy = False
            self.fetch_failures += 1
            self.last_fetch_failure = reason

    def forgive(self, now: float) -> None:
        """This node stood still until ``now``: restart the backups' progress clocks too, so a
        stall longer than ``lag_timeout`` does not make every backup look like a laggard."""
        for node, (acked, since) in self.progress.items():
            self.progress[node] = (acked, max(since, now))

    def leave(self, reason: str, now: float) -> None:
        """The host cannot go on with this state (e.g. a replay diverged): drop it and rejoin."""
        self._reset(reason, now)

    def annex(self, index: int, blob: bytes) -> None:
        """The primary's host attaches what backups need to reproduce input ``index``."""
        if not self.cfg.annexed or not self.is_primary:
            return
        check_payload(self.cfg, blob)
        e = self.log.get(index)
        if e is None or index != self.annexed_upto + 1:
            raise ValueError(f"annex for index {index}, expected {self.annexed_upto + 1}")
        self.log[index] = LogEntry(e.index, e.src_group, e.conn_id, e.seq, e.payload, blob)
        self.annexed_upto = index

    def fence_result(self, node: int, ok: bool, now: float) -> None:
        self.fence_pending.pop(node, None)
        if ok:
            self.fenced.add(node)
            self.fence_failed.pop(node, None)
        else:
            self.fence_failed[node] = now
            if self.candidacy is not None and node in self.candidacy.targets:
                self._abort_candidacy(f"fencing node {node} failed", now)

    # ------------------------------------------------------------------ helpers

    def _set_role(self, role: Role, reason: str) -> None:
        if role is not self.role:
            self.role = role
            self.issued.clear()  # a snapshot issued in an earlier reign proves nothing now
            self.retained = None
            self.events.append(RoleChanged(role, self.view, reason))

    def _install_view(self, view: View, now: float) -> None:
        old = self.view
        self.view = view
        self.max_view_seen = max(self.max_view_seen, view.number)
        self.promised = max(self.promised, view.number)
        # A gateway counts only confirmations of the primary's current reign, and on a new
        # view the primary resends its held replies under it: confirm again what we hold (the
        # next flush), or those replies wait for our next heartbeat, up to 20 ms. A joiner's
        # confirmations as a learner carried no view at all.
        self.last_ack_sent = 0
        members = set(view.nodes)
        for n in list(self.acks):
            if n not in members:
                self.acks.pop(n)
                self.progress.pop(n, None)
        for n in members:
            if n != self.me.node:
                self.progress.setdefault(n, (self.acks.get(n, 0), now))
        # A node out of the view no longer needs fencing bookkeeping.
        if old is not None:
            for n in set(old.nodes) - members:
                self.dead.discard(n)
                self.fenced.discard(n)
        self.events.append(ViewInstalled(view))

    def _outbound(self, dst_group: int, conn_id: int) -> OutboundConnection:
        key = (dst_group, conn_id)
        ob = self.outbound.get(key)
        if ob is None:
            rtt = RttEstimator(self.cfg.initial_rto, self.cfg.min_rto, self.cfg.max_rto)
            ob = OutboundConnection(dst_group, conn_id, self.cfg.window, rtt)
            self.outbound[key] = ob
        return ob

    def _inbound(self, src_group: int, conn_id: int) -> InboundConnection:
        key = (src_group, conn_id)
        ib = self.inbound.get(key)
        if ib is None:
            ib = InboundConnection(src_group, conn_id, self.cfg.window)
            self.inbound[key] = ib
        return ib

    def _failed(self, node: int, now: float) -> bool:
        if node in self.dead:
            return True
        if node == self.me.node or node not in self.fd.watched():
            return False
        return self.fd.health(node, now) is not Health.ALIVE

    def _proven_down(self, node: int, now: float) -> bool:
        """Restarted (new incarnation) or silent with a flat heartbeat wire."""
        if node in self.dead:
            return True
        return node in self.fd.watched() and self.fd.health(node, now) is Health.CRASHED

    def _excludable(self, node: int) -> bool:
        """The fence gate: a member leaves a view only once fenced (or provably gone)."""
        return node in self.fenced or node in self.dead

    def _request_fence(self, node: int, reason: str, now: float) -> None:
        if self._excludable(node) or node in self.fence_pending:
            return
        failed_at = self.fence_failed.get(node)
        if failed_at is not None and now < failed_at + self.cfg.fence_retry:
            return
        self.fence_pending[node] = now
        self.events.append(FenceRequested(node, reason))

    def _records(self, room: int) -> list[OrderRecord]:
        """Ordering records not yet held by every member: piggybacked on what we send."""
        if not self.is_primary or room <= 0 or self.cfg.annexed:
            return []  # annexed entries' records travel with their annexes (ORDER) only
        hi = self.annexed_upto
        lo = max(self.commit, hi - min(room, MAX_PIGGYBACK)) + 1
        out = []
        for i in range(lo, hi + 1):
            e = self.log.get(i)
            if e is not None:
                out.append(OrderRecord(i, e.src_group, e.conn_id, e.seq))
        if out:
            self.record_sent_upto = max(self.record_sent_upto, out[-1].index)
        return out

    def _emit(
        self,
        body: Body,
        *,
        dst_group: int | None = None,
        conn_id: int = 0,
        seq: int = 0,
        ack: int = 0,
    ) -> None:
        """Send a message of this group; a primary piggybacks its ordering records.

        Not on what goes to our own node's gateway: that never leaves the process (see
        ``Outbox.emit``), so records on it would reach no backup.
        """
        if dst_group is not None and dst_group == self.out.own_gateway:
            records: list[OrderRecord] = []
        else:
            records = self._records(self.out.records_room(len(body.encode())))
        self.out.emit(
            body,
            src_group=self.group,
            dst_group=self.group if dst_group is None else dst_group,
            conn_id=conn_id,
            view=self.view.number if self.view is not None else self.promised,
            seq=seq,
            ack=ack,
            records=records,
        )

    # ------------------------------------------------------------------ delivery

    def _deliver(self, entry: LogEntry, ordered_here: bool = False) -> None:
        self.delivered = entry.index
        self.log[entry.index] = entry
        if not ordered_here or not self.cfg.annexed:
            self.annexed_upto = entry.index
        self._inbound(entry.src_group, entry.conn_id).mark_delivered(entry.seq)
        if is_gateway_group(entry.src_group):
            self._forget_older_connections(entry.src_group, entry.conn_id)
        self.events.append(
            Delivered(
                entry.index,
                entry.src_group,
                entry.conn_id,
                entry.seq,
                entry.payload,
                None if ordered_here else entry.annex,
            )
        )

    def _forget_older_connections(self, src_group: int, conn_id: int) -> None:
        """A gateway restarted (new connection id): its old connections are dead.

        Done at a point of the ordered log, so every replica forgets at the same point.
        """
        for key in [k for k in self.inbound if k[0] == src_group and k[1] < conn_id]:
            del self.inbound[key]
            self.ack_sent.pop(key, None)
        for key in [k for k in self.outbound if k[0] == src_group and k[1] < conn_id]:
            del self.outbound[key]

    def _order_ready(self) -> None:
        """The primary delivers every in-sequence input: this *is* the total order."""
        if not self.is_primary or (self.admission is not None and self.admission.freeze):
            return
        if self.stepdown is not None:
            return  # handing over: inputs stay buffered for the successor to order
        for key in sorted(self.inbound):
            ib = self.inbound.get(key)
            while ib is not None and (nxt := ib.peek_next()) is not None:
                if self.delivered - self.commit >= self.cfg.max_log:
                    self.order_stalled += 1
                    return
                seq, payload = nxt
                entry = LogEntry(self.delivered + 1, key[0], key[1], seq, payload)
                self._deliver(entry, ordered_here=True)
                ib = self.inbound.get(key)

    def _try_deliver(self) -> None:
        """A backup (or learner, or recovering candidate) delivers in the primary's order."""
        while True:
            idx = self.delivered + 1
            item = self.pending.get(idx)
            if item is None:
                return
            annex = b""
            if self.cfg.annexed:
                found = self.annex_pending.get(idx)
                if found is None:
                    return  # the primary's annex has not arrived yet
                annex = found
            if isinstance(item, LogEntry):
                entry = LogEntry(idx, item.src_group, item.conn_id, item.seq, item.payload, annex)
            else:
                ib = self._inbound(item.src_group, item.conn_id)
                if item.seq <= ib.delivered:
                    # Already delivered under another index: the record contradicts our log.
                    self.pending.pop(idx)
                    return
                payload = ib.payload(item.seq)
                if payload is None or item.seq != ib.delivered + 1:
                    return
                entry = LogEntry(idx, item.src_group, item.conn_id, item.seq, payload, annex)
            self.pending.pop(idx)
            self.annex_pending.pop(idx, None)
            self._deliver(entry)

    def _advance_commit(self, new: int) -> None:
        new = min(new, self.delivered)
        if new <= self.commit:
            return
        for i in range(self.commit + 1, new + 1):
            e = self.log.get(i)
            if e is not None:
                ib = self.inbound.get((e.src_group, e.conn_id))
                if ib is not None:
                    ib.stable = max(ib.stable, e.seq)
        self.commit = new
        self.events.append(Committed(new))
        keep_from = new
        if self.admission is not None:
            keep_from = min(keep_from, self.admission.index)
        if self.retained is not None:
            keep_from = min(keep_from, self.retained.index)
        for i in [i for i in self.log if i <= keep_from]:
            del self.log[i]

    def _primary_commit(self) -> None:
        if not self.is_primary or self.view is None:
            return
        low = self.annexed_upto  # an input counts once the host attached its annex
        for m in self.view.backups:
            low = min(low, self.acks.get(m.node, 0))
        self._advance_commit(low)

    # ------------------------------------------------------------------ receive

    def on_datagram(self, d: Datagram, body: object, now: float) -> None:
        h = d.header
        if h.src_group == self.group:
            self._from_member(d, body, now)
        elif h.dst_group == self.group:
            self._from_client_group(d, body, now)

    def _from_client_group(self, d: Datagram, body: object, now: float) -> None:
        """Traffic from another group (a gateway) into ours, heard by every member."""
        h = d.header
        if self.role is Role.JOINING:
            return
        ob = self.outbound.get((h.src_group, h.conn_id))
        if isinstance(body, Data):
            if ob is not None:
                ob.on_ack(h.ack, now)
            ib = self._inbound(h.src_group, h.conn_id)
            for e in body.entries:
                if not ib.offer(e.seq, e.payload) and e.seq <= ib.stable and self.is_primary:
                    # The sender missed our ack (it resends what we hold): ack again.
                    self.ack_sent[(h.src_group, h.conn_id)] = 0
            if self.is_primary and ib.gaps():
                self.nacks_due.setdefault((h.src_group, h.conn_id), now + self.cfg.nack_delay)
        elif isinstance(body, FirstAck):
            if ob is not None:
                ob.on_ack(h.ack, now, body.credit)
        elif isinstance(body, Nack) and ob is not None and self.is_primary:
            # A gap in our replies (target 0: whoever is primary): fast retransmit.
            ob.on_nack(body.ranges)

    def _from_primary(self, h: Header) -> bool:
        """Is this datagram from the primary whose order we follow right now?"""
        if self.role is Role.LEARNING and self.learning_from is not None:
            src = self.learning_from
            return h.src_node == src.node and h.incarnation == src.incarnation
        if self.view is None or self.role not in (Role.BACKUP, Role.CANDIDATE):
            return False
        p = self.view.primary
        return (
            h.src_node == p.node
            and h.incarnation == p.incarnation
            and h.view >= self.view.number
            and h.view >= self.promised
        )

    def _from_member(self, d: Datagram, body: object, now: float) -> None:
        h = d.header
        node = h.src_node
        self.max_view_seen = max(self.max_view_seen, h.view)
        if self.view is not None:
            m = self.view.member(node)
            if m is not None and h.incarnation != m.incarnation and node != self.me.node:
                # The member restarted: the incarnation in our view is gone for good.
                self.dead.add(node)
        from_primary = self._from_primary(h)
        if from_primary:
            for r in d.records:
                if r.index > self.delivered and r.index not in self.pending:
                    self.pending[r.index] = r
                self.known_end = max(self.known_end, r.index)
        handler = _HANDLERS.get(type(body))
        if handler is not None:
            handler(self, h, body, now, from_primary)
        if from_primary and self.role in (Role.BACKUP, Role.LEARNING, Role.CANDIDATE):
            self._try_deliver()

    # -- per message type -------------------------------------------------------------

    def _on_second_ack(self, h: Header, body: SecondAck, now: float, from_primary: bool) -> None:
        self._note_ack(h.src_node, body.delivered, now)

    def _note_ack(self, node: int, delivered: int, now: float) -> None:
        if not self.is_primary:
            return
        if (self.view is not None and node in self.view) or (
            self.admission is not None and self.admission.joiner.node == node
        ):
            if delivered > self.acks.get(node, -1):
                self.acks[node] = delivered
                self.progress[node] = (delivered, now)
            self._primary_commit()
            adm = self.admission
            if adm is not None and adm.joiner.node == node:
                adm.live = adm.live or (adm.installed and delivered > adm.installed_index)
                self._tick_admission(now)

    def _on_nack(self, h: Header, body: Nack, now: float, from_primary: bool) -> None:
        if body.target != self.me.node:
            return
        if body.kind is NackKind.ENTRIES:
            self._send_repair(body.ranges)
        elif body.kind is NackKind.STATE and self.admission is not None:
            adm = self.admission
            if adm.snapshot_id == body.snapshot_id and adm.chunks is not None:
                idx = [i for lo, hi in body.ranges for i in range(lo, min(hi, 10**6) + 1)]
                self._send_chunks(adm, [i for i in idx if i < len(adm.chunks)], now)

    def _send_repair(self, ranges: tuple[tuple[int, int], ...]) -> None:
        entries: list[LogEntry] = []
        size = 0
        found: list[LogEntry] = []
        for lo, hi in ranges:
            for i in range(lo, min(hi, self.annexed_upto) + 1):
                e = self.log.get(i)
                if e is None:
                    continue
                if len(found) >= MAX_REPAIR_BURST:
                    break
                found.append(e)
                if (
                    size + len(e.payload) + 40 > self.cfg.batch_bytes
                    or len(entries) >= MAX_REPAIR_ENTRIES
                ):
                    self._emit(Order(self.commit, tuple(entries)))
                    entries, size = [], 0
                entries.append(e)
                size += len(e.payload) + 40
        if entries:
            self._emit(Order(self.commit, tuple(entries)))
        if self.cfg.annexed:
            self._send_annexes(found, with_records=False)

    @property
    def carries_own_requests(self) -> bool:
        """Our ORDER messages carry our own gateway's requests whole, so that gateway need not
        multicast them (``Outbox.requests_in_order``): a primary ordering annexed inputs, and
        not handing over (a successor must hear them: its own order is the one that counts)."""
        return self.role is Role.PRIMARY and self.cfg.annexed and self.stepdown is None

    def _send_annexes(self, entries: list[LogEntry], with_records: bool) -> None:
        """ORDER messages carrying annexes (and, for fresh entries, their ordering records).

        Fresh inputs of our own gateway go whole: its requests reach only our own replica
        while it is primary (see :attr:`carries_own_requests`). One too large to share a
        datagram with its annex goes on its own first, as a repair would send it.
        """
        base = 8 + 4 + 4  # commit, entry count, annex count
        batch: list[tuple[LogEntry, bool]] = []
        size = base
        own = self.out.own_gateway

        def flush() -> None:
            records = [OrderRecord(e.index, e.src_group, e.conn_id, e.seq) for e, _ in batch]
            body = Order(
                self.commit,
                tuple(e for e, whole in batch if whole),
                tuple((e.index, e.annex) for e, _ in batch),
            )
            self.out.emit(
                body,
                src_group=self.group,
                dst_group=self.group,
                view=self.view.number if self.view is not None else self.promised,
                records=records if with_records else (),
            )

        for e in entries:
            cost = len(e.annex) + 12 + (22 if with_records else 0)
            whole = with_records and e.src_group == own
            if whole:
                framed = ORDER_ENTRY_OVERHEAD + len(e.payload)
                if base + cost + framed > self.cfg.batch_bytes:
                    self._emit(Order(self.commit, (e,)))
                    whole = False
                else:
                    cost += framed
            if batch and (size + cost > self.cfg.batch_bytes or len(batch) >= MAX_PIGGYBACK):
                flush()
                batch, size = [], base
            batch.append((e, whole))
            size += cost
        if batch:
            flush()

    def _on_order(self, h: Header, body: Order, now: float, from_primary: bool) -> None:
        c = self.candidacy
        trusted = from_primary or (
            c is not None and c.phase is Phase.RECOVERING and h.src_node == c.source
        )
        if not trusted:
            return
        for e in body.entries:
            if e.index > self.delivered:
                self.pending[e.index] = e
                self.known_end = max(self.known_end, e.index)
        for index, annex in body.annexes:
            if index > self.delivered:
                self.annex_pending[index] = annex
        if c is not None and c.phase is Phase.RECOVERING:
            self._try_deliver()
            self._maybe_finish_recovery(now)
        elif from_primary:
            self._try_deliver()
            self._advance_commit(body.commit)

    def _on_heartbeat(self, h: Header, body: Heartbeat, now: float, from_primary: bool) -> None:
        node = h.src_node
        if body.role in (Role.JOINING,):
            self.viewless_heard[node] = now
        else:
            self.viewful_heard = now
        if (
            self.role is Role.LEARNING
            and body.role is not Role.PRIMARY
            and self.learning_from == Member(node, h.incarnation)
        ):
            # Only a primary admits: ours stepped down or lost the role, and with it our
            # admission. Rejoin now: following its records (should it be primary again) would
            # count as progress forever without ever being accepted, and its successor may
            # have died before we heard it announce itself.
            self._reset(f"node {node}, the source of our state, is no longer primary", now)
            return
        if body.role is Role.PRIMARY:
            self._on_primary_announcement(h, body.members, now)
            if from_primary:
                self.known_end = max(self.known_end, body.delivered)
                self._advance_commit(body.commit)
        elif body.role in (Role.BACKUP, Role.LEARNING):
            self._note_ack(node, body.delivered, now)

    def _on_primary_announcement(self, h: Header, members: tuple[Member, ...], now: float) -> None:
        """Someone says it is primary of view ``h.view``: follow it, step down, or rejoin."""
        node = h.src_node
        if not members or members[0].node != node:
            return
        if self.role in (Role.JOINING, Role.LEARNING):
            self.primary_hint = (members[0], now)
            self.announced = members
            if (
                self.role is Role.LEARNING
                and self.learning_from is not None
                and members[0] != self.learning_from
            ):
                self._reset(f"node {node} became primary while we were learning", now)
            return
        view = self.view
        if view is None:
            return
        if h.view <= view.number or h.view < self.promised:
            return
        new_view = View(h.view, members)
        if self.me not in members:
            self._reset(f"{new_view.describe()} does not include us", now)
            return
        if self.is_primary:
            self._reset(f"node {node} is primary of newer {new_view.describe()}", now)
            return
        self._follow(new_view, now)

    def _follow(self, view: View, now: float) -> None:
        """Install a view as a backup (a newer one from a heartbeat, NEW_VIEW, or a change)."""
        primary_changed = self.view is None or self.view.primary != view.primary
        if self.candidacy is not None:
            self.candidacy = None
        if primary_changed:
            # Records from an older primary that we never delivered are void now.
            self.pending = {i: p for i, p in self.pending.items() if i <= self.delivered}
            self.annex_pending.clear()
            self.known_end = self.delivered
        self._install_view(view, now)
        self.suspect_since = None
        self._end_admission()  # a former primary admits nobody (and frees a served snapshot)
        self._set_role(Role.BACKUP, f"following node {view.primary.node} in {view.describe()}")
        sd = self.stepdown
        if sd is not None and sd.phase is HandoverPhase.VOTED:
            ok = sd.successor is not None and view.primary == sd.successor
            why = "" if ok else ", not our successor"
            self._end_stepdown(ok, f"node {view.primary.node} is primary of {view.describe()}{why}")

    def _on_propose_primary(
        self, h: Header, body: ProposePrimary, now: float, from_primary: bool
    ) -> None:
        proposer = h.src_node
        n = h.view
        if self.is_primary and self.view is not None and n > self.view.number:
            sd = self.stepdown
            offered = sd.phase is HandoverPhase.OFFERED if sd is not None else True
            if (
                offered
                and self.offered_to == Member(proposer, h.incarnation)
                and self.offered_to in self.view.members
                and any(m == self.me for m in body.members)
            ):
                # The successor we offered the role to takes it (perhaps after our offer timed
                # out): stop being primary before voting, so its view never overlaps ours. Its
                # recovery adopts the longest log, so what we ordered meanwhile is not lost.
                if sd is None:
                    sd = self.stepdown = StepDown(now, successor=self.offered_to)
                sd.phase = HandoverPhase.VOTED
                sd.voted_at = now
                self._set_role(Role.BACKUP, f"handing over to node {proposer} (view {n})")
            else:
                # Someone fenced us (as far as it knows) and takes over: never two primaries.
                self._reset(f"node {proposer} proposes itself primary of view {n}", now)
                return
        if not any(m == self.me for m in body.members):
            return
        if self.role in (Role.JOINING, Role.LEARNING):
            return
        if self.voted == (n, Member(proposer, h.incarnation)) and n == self.promised:
            # A repeated proposal (our vote was lost): the same yes, not a refusal that would
            # make the proposer start over with a higher number, and again, forever.
            self._emit(PrimaryVote(proposer, True, n, self.delivered))
            return
        if n <= self.promised or (self.view is not None and n <= self.view.number):
            promised = max(self.promised, self.view.number if self.view else 0)
            self._emit(PrimaryVote(proposer, False, promised, self.delivered))
            return
        self.promised = n
        self.voted = (n, Member(proposer, h.incarnation))
        if self.candidacy is not None:
            self._abort_candidacy(f"node {proposer} proposed view {n}", now)
        self._emit(PrimaryVote(proposer, True, n, self.delivered))

    def _on_primary_vote(
        self, h: Header, body: PrimaryVote, now: float, from_primary: bool
    ) -> None:
        c = self.candidacy
        if c is None or body.proposer != self.me.node or c.phase is not Phase.PROPOSING:
            return
        if not body.accept:
            if body.promised >= c.number:
                self.promised = max(self.promised, body.promised)
                self._propose(now)
            return
        if body.promised != c.number or not any(m.node == h.src_node for m in c.members):
            return
        c.votes[h.src_node] = body.delivered
        self._maybe_recover(now)

    def _on_new_view(self, h: Header, body: NewView, now: float, from_primary: bool) -> None:
        if self.role in (Role.JOINING,):
            return
        self._on_primary_announcement(h, body.members, now)
        if self.view is not None and self.view.number == h.view:
            self.known_end = max(self.known_end, body.log_end)

    def _on_handover(self, h: Header, body: Handover, now: float, from_primary: bool) -> None:
        """Our primary steps down in our favour: take over without fencing it."""
        if not from_primary or self.role is not Role.BACKUP or body.successor != self.me:
            return
        self.known_end = max(self.known_end, body.delivered)
        if self.delivered < body.delivered:
            return  # catch up first (NACK ENTRIES); the offer is repeated
        self.candidacy = Candidacy(set(), now, demote=Member(h.src_node, h.incarnation))
        self._set_role(Role.CANDIDATE, f"primary {h.src_node} hands over to us")
        self._propose(now)

    def _on_propose_backup(
        self, h: Header, body: ProposeBackup, now: float, from_primary: bool
    ) -> None:
        if not self.is_primary or self.view is None:
            return
        joiner = Member(h.src_node, h.incarnation)
        if h.src_node in self.view:
            # A member asking to join has lost its state (restarted or reset): it is gone.
            self.dead.add(h.src_node)
            return
        if self.stepdown is not None:
            return  # handing over: the next primary admits it
        adm = self.admission
        if adm is not None:
            restarted = (adm.joiner == joiner and adm.installed) or (  # it reset after installing
                adm.joiner.node == joiner.node and adm.joiner.incarnation < joiner.incarnation
            )  # or restarted: its predecessor will never take the snapshot
            if not restarted and now < adm.started + self.cfg.join_timeout:
                return
        r = self.retained
        if r is not None and r.joiner.node == joiner.node and r.joiner != joiner:
            self.retained = None  # restarted: its predecessor's log is of no use
        gone = adm is not None and adm.joiner.node == joiner.node and adm.joiner != joiner
        self._end_admission(None if gone else now)
        self.snapshot_counter += 1
        self.issued[self.snapshot_counter] = joiner
        while len(self.issued) > ISSUED_KEPT:
            del self.issued[next(iter(self.issued))]
        self.admission = Admission(
            joiner, self.snapshot_counter, self.delivered, self._protocol_state(), now
        )
        self.acks.pop(joiner.node, None)
        self.events.append(SnapshotRequested(self.snapshot_counter, joiner.node, self.delivered))

    def _on_accept_backup(
        self, h: Header, body: AcceptBackup, now: float, from_primary: bool
    ) -> None:
        if self.role is Role.LEARNING:
            if body.confirmed and from_primary and any(m == self.me for m in body.members):
                self._accepted(View(h.view, body.members), now)
                self._emit(AcceptAck(AckKind.VIEW, 0, self.delivered))
            return
        self._on_primary_announcement(h, body.members, now)
        if self.view is not None and self.view.number == h.view and self.role is Role.BACKUP:
            self._emit(AcceptAck(AckKind.VIEW, 0, self.delivered))

    def _on_remove_backup(
        self, h: Header, body: RemoveBackup, now: float, from_primary: bool
    ) -> None:
        self._on_primary_announcement(h, body.members, now)

    def _on_accept_ack(self, h: Header, body: AcceptAck, now: float, from_primary: bool) -> None:
        conf = self.confirming
        if self.is_primary and conf is not None and body.kind is AckKind.VIEW:
            if h.view == conf.view.number:
                others = conf.waiting - {conf.joiner.node}
                conf.waiting.discard(h.src_node)
                if h.src_node == conf.joiner.node:
                    self.confirming = None
                elif others and not conf.waiting - {conf.joiner.node} and self.view is not None:
                    # The last member to learn of the joiner: confirm it now, not at the next
                    # retry (proposal_retry, 30 ms, while every write waits for the joiner).
                    conf.last_sent = now
                    self._emit(AcceptBackup(self.view.members, conf.joiner.node, confirmed=True))
            return
        if not self.is_primary or body.kind is not AckKind.STATE_INSTALLED:
            return
        joiner = Member(h.src_node, h.incarnation)
        adm = self.admission
        if adm is None or (adm.joiner == joiner and adm.snapshot_id != body.snapshot_id):
            adm = self._adopt_learner(joiner, body.snapshot_id, body.delivered, now)
        if adm is not None and adm.joiner == joiner and adm.snapshot_id == body.snapshot_id:
            if not adm.installed:
                adm.installed, adm.installed_at = True, now
                adm.installed_index = body.delivered
            self.acks[h.src_node] = max(self.acks.get(h.src_node, 0), body.delivered)

    def _adopt_learner(
        self, joiner: Member, snapshot_id: int, delivered: int, now: float
    ) -> Admission | None:
        """A learner holding a snapshot we issued to it in this reign is admitted from there.

        The joiner's host may stall while it loads a large snapshot (a 100,000-key restore
        takes a quarter of a second): the admission is then dropped as failed, or replaced by
        a fresh one when the joiner's repeated request arrives, while the joiner goes on to
        install the old snapshot and follow the live traffic. Its state is exactly what the
        admission would have produced, so it goes on from there rather than learning until
        ``LEARNING_LIMIT`` runs out and starting over with the same stall.
        """
        adm = self.admission
        if (
            self.issued.get(snapshot_id) != joiner
            or self.view is None
            or joiner.node in self.view
            or self.stepdown is not None
            or self.confirming is not None
            or (adm is not None and (adm.joiner != joiner or adm.installed))
            or not (delivered >= self.delivered or delivered + 1 in self.log)
        ):
            return adm
        self._end_admission()
        adm = self.admission = Admission(joiner, snapshot_id, delivered, b"", now)
        self.acks.pop(joiner.node, None)
        self.adopted += 1
        return adm

    def _on_state(self, h: Header, body: StateChunk, now: float, from_primary: bool) -> None:
        if body.target != self.me.node or self.role is not Role.JOINING:
            return
        src = Member(h.src_node, h.incarnation)
        a = self.assembly
        if a is None or a.snapshot_id != body.snapshot_id or a.source != src:
            a = self.assembly = Assembly(src, body.snapshot_id, body.index, body.total, now)
            a.last_nack = now
        a.chunks[body.chunk] = body.data
        if len(a.chunks) == a.total:
            blob = b"".join(a.chunks[i] for i in range(a.total))
            self._install_snapshot(a.source, a.snapshot_id, (blob,), now)

    def _on_state_offer(self, h: Header, body: StateOffer, now: float, from_primary: bool) -> None:
        me = Member(body.target, body.target_incarnation)
        if me != self.me or self.role is not Role.JOINING:
            return
        src = Member(h.src_node, h.incarnation)
        f = self.fetch
        if f is not None and f.source == src and f.snapshot_id == body.snapshot_id:
            if f.busy or now < f.requested + self.cfg.join_retry:
                return  # the host is on it, or failed a moment ago: the next offer retries
        else:
            f = self.fetch = Fetch(
                src, body.snapshot_id, body.index, body.size, body.digest, now, now
            )
        f.busy = True
        f.requested = now
        self.fetches += 1
        self.events.append(
            SnapshotOffered(
                src.node, src.incarnation, body.snapshot_id, body.index, body.size, body.digest
            )
        )

    # ------------------------------------------------------------------ state transfer

    def _protocol_state(self) -> bytes:
        """The replicated protocol state at our delivered index (snapshot companion)."""
        w = Writer().u64(self.delivered).u32(len(self.inbound))
        for (g, c), ib in sorted(self.inbound.items()):
            w.u16(g).u32(c).u64(ib.delivered).u64(ib.stable)
        w.u32(len(self.outbound))
        for (g, c), ob in sorted(self.outbound.items()):
            pend = ob.pending()
            w.u16(g).u32(c).u64(ob.next_seq).u64(ob.acked).u32(len(pend))
            for s, p in pend:
                w.u64(s).blob(p)
        return w.getvalue()

    def _install_snapshot(
        self, source: Member, snapshot_id: int, parts: Sequence[bytes], now: float
    ) -> None:
        proto, app = _split_snapshot(parts)
        r = Reader(proto)
        index = r.u64()
        self.inbound.clear()
        self.outbound.clear()
        for _ in range(r.count(1 << 20)):
            g, c, delivered, stable = r.u16(), r.u32(), r.u64(), r.u64()
            ib = self._inbound(g, c)
            ib.delivered, ib.stable = delivered, stable
        for _ in range(r.count(1 << 20)):
            g, c, nxt, acked = r.u16(), r.u32(), r.u64(), r.u64()
            pend = [(r.u64(), r.blob()) for _ in range(r.count(1 << 20))]
            self._outbound(g, c).restore(nxt, acked, pend)
        r.finish()
        self.delivered = self.commit = self.known_end = index
        self.log.clear()
        self.pending.clear()
        self.annex_pending.clear()
        self.annexed_upto = index
        self.assembly = None
        self.fetch = None
        self.learning_from = source
        self.learning_since = now
        self.learning_progress = (self.delivered, now)
        self.events.append(SnapshotInstalled(index, app))
        self._set_role(Role.LEARNING, f"state from node {source.node} installed at {index}")
        self.learning_snapshot = snapshot_id
        self.restoring = self.cfg.host_confirms_restore
        if not self.restoring:
            self._report_installed(now)

    def restored(self, now: float) -> None:
        """The host has loaded the installed snapshot (and applied what was delivered since):
        report it installed now, with everything delivered meanwhile."""
        if not self.restoring:
            return
        self.restoring = False
        if self.role is Role.LEARNING:
            self._report_installed(now)

    def _report_installed(self, now: float) -> None:
        """The primary admits us only once it knows the snapshot is installed (and loaded)."""
        self.last_install_ack = now
        self._emit(AcceptAck(AckKind.STATE_INSTALLED, self.learning_snapshot, self.delivered))

    def _send_offer(self, adm: Admission, now: float) -> None:
        assert adm.parts is not None
        adm.last_sent = now
        size = sum(map(len, adm.parts))
        j = adm.joiner
        self._emit(StateOffer(j.node, j.incarnation, adm.snapshot_id, adm.index, size, adm.digest))

    def _end_admission(self, now: float | None = None) -> None:
        """Forget the admission in progress; the host may free a snapshot it was serving.

        Given ``now``, the joiner may still be alive (stalled, or asking again): the log after
        its snapshot is kept for a join timeout, so that it can still be adopted from there.
        """
        adm, self.admission = self.admission, None
        if adm is None:
            return
        if adm.parts is not None:
            self.events.append(SnapshotReleased(adm.snapshot_id))
        if now is not None and self.is_primary:
            r = self.retained
            index = adm.index if r is None or r.joiner != adm.joiner else min(r.index, adm.index)
            self.retained = Retained(adm.joiner, index, now)

    def _send_chunks(self, adm: Admission, which: Iterable[int], now: float) -> None:
        assert adm.chunks is not None
        adm.last_sent = now
        for i in which:
            self._emit(
                StateChunk(
                    adm.joiner.node, adm.snapshot_id, adm.index, i, len(adm.chunks), adm.chunks[i]
                )
            )

    def _accepted(self, view: View, now: float) -> None:
        self.learning_from = None
        self._install_view(view, now)
        self._set_role(Role.BACKUP, f"accepted into {view.describe()}")

    # ------------------------------------------------------------------ membership changes

    def _reset(self, reason: str, now: float) -> None:
        """Leave the group: forget the state and start over as a joiner."""
        if self.stepdown is not None:
            self._end_stepdown(False, f"left the group: {reason}")
        self.view = None
        self.candidacy = None
        released = self.admission
        self.admission = None
        self.confirming = None
        self.assembly = None
        self.fetch = None
        self.learning_from = None
        self.restoring = False
        self.delivered = self.commit = self.known_end = self.record_sent_upto = 0
        self.last_ack_sent = 0
        self.log.clear()
        self.pending.clear()
        self.annex_pending.clear()
        self.annexed_upto = 0
        self.inbound.clear()
        self.outbound.clear()
        self.acks.clear()
        self.progress.clear()
        self.dead.clear()
        self.fenced.clear()
        self.fence_pending.clear()
        self.ack_sent.clear()
        self.nacks_due.clear()
        self.primary_hint = None
        self.announced = None
        self.offered_to = None
        self.started = now
        # Inputs not yet applied by the host belong to the state being dropped.
        stale = (
            Delivered,
            Committed,
            SnapshotInstalled,
            SnapshotRequested,
            SnapshotReady,
            SnapshotOffered,
        )
        kept = [ev for ev in self.events if not isinstance(ev, stale)]
        self.events.clear()
        self.events.extend(kept)
        if released is not None and released.parts is not None:
            self.events.append(SnapshotReleased(released.snapshot_id))
        self.events.append(StateReset(reason))
        self._set_role(Role.JOINING, reason)

    def _remove_backup(self, node: int, now: float) -> None:
        assert self.view is not None
        view = self.view.without({node}, self.view.number + 1)
        self._install_view(view, now)
        self._emit(RemoveBackup(view.members, node))
        self._primary_commit()
        self._announce_reign()

    def _announce_reign(self) -> None:
        """The primary installed a view of its own: release the output held under the old one.

        A gateway holds each tentative reply until it sees commit evidence of the *reign* (view
        number, primary) the reply was sent in: that view's backups confirming its input, or the
        primary announcing a commit point that covers it. A new view is a new reign, so that
        evidence stops: a removed backup never confirms again, and what the new view's members
        confirm does not count for replies sent before it. Left alone, those replies would wait
        for the retransmission timer, which has backed off while the failed member held the
        commit point still. So every reply not yet acknowledged is resent now, under the new
        view and listing its backups, and the commit point is announced in it (an ORDER).

        Output commit is kept: the new view's commit point counts only its members, each of
        which holds what it confirmed, and a resent reply is released only on evidence of the
        new view.
        """
        for ob in self.outbound.values():
            ob.resend_unacked()
        self._emit(Order(self.commit))

    def _abort_candidacy(self, reason: str, now: float) -> None:
        self.candidacy = None
        self.suspect_since = None
        if self.view is not None:
            self._set_role(Role.BACKUP, f"candidacy abandoned: {reason}")
        else:
            self._set_role(Role.JOINING, f"founding abandoned: {reason}")

    def _propose(self, now: float) -> None:
        c = self.candidacy
        assert c is not None
        c.phase = Phase.PROPOSING
        c.number = max(self.promised, self.max_view_seen, self.view.number if self.view else 0) + 1
        self.promised = c.number
        base = self.view.members if self.view is not None else (self.me,)
        demote = c.demote if c.demote is not None and c.demote.node not in c.targets else None
        rest = [m for m in base if m.node not in c.targets and m != self.me and m != demote]
        c.members = (self.me, *rest, *((demote,) if demote is not None else ()))
        c.votes = {self.me.node: self.delivered}
        c.started = now
        c.last_sent = now
        self.out.emit(
            ProposePrimary(c.members),
            src_group=self.group,
            dst_group=self.group,
            view=c.number,
        )
        self._maybe_recover(now)

    def _maybe_recover(self, now: float) -> None:
        c = self.candidacy
        if c is None or c.phase is not Phase.PROPOSING:
            return
        if any(m.node not in c.votes for m in c.members):
            return
        c.phase = Phase.RECOVERING
        c.source, c.target = max(c.votes.items(), key=lambda kv: (kv[1], -kv[0]))
        self.pending = {i: p for i, p in self.pending.items() if i <= self.delivered}
        self.annex_pending.clear()
        c.last_sent = -NEVER
        self._maybe_finish_recovery(now)

    def _maybe_finish_recovery(self, now: float) -> None:
        c = self.candidacy
        if c is None or c.phase is not Phase.RECOVERING or self.delivered < c.target:
            return
        view = View(c.number, c.members)
        self.candidacy = None
        self.pending.clear()
        self._install_view(view, now)
        self.acks = {n: d for n, d in c.votes.items() if n != self.me.node}
        self.progress = {n: (d, now) for n, d in self.acks.items()}
        self._set_role(Role.PRIMARY, f"primary of {view.describe()}")
        self.record_sent_upto = self.commit
        for ob in self.outbound.values():
            ob.take_over()
        self._emit(NewView(view.members, self.delivered))
        self._primary_commit()
        self._announce_reign()  # take_over already marked the sent list due
        self._order_ready()

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> None:
        if self.role is Role.PRIMARY:
            self._tick_primary(now)
        elif self.role is Role.BACKUP:
            self._tick_backup(now)
        elif self.role is Role.CANDIDATE:
            self._tick_candidate(now)
        elif self.role is Role.JOINING:
            self._tick_joining(now)
        elif self.role is Role.LEARNING:
            self._tick_learning(now)

    def _lagging(self, node: int, now: float) -> bool:
        acked, since = self.progress.get(node, (0, now))
        if acked >= self.delivered:
            self.progress[node] = (acked, now)
            return False
        return now - since > self.cfg.lag_timeout

    def _tick_primary(self, now: float) -> None:
        assert self.view is not None
        for m in self.view.backups:
            n = m.node
            failed = self._failed(n, now)
            if failed or self._lagging(n, now):
                if self._excludable(n):
                    self._remove_backup(n, now)
                else:
                    why = "silent" if failed else "not keeping up"
                    self._request_fence(n, f"backup {n} is {why}", now)
        self._tick_admission(now)
        self._tick_confirming(now)
        self._tick_stepdown(now)

    def _end_stepdown(self, ok: bool, reason: str) -> None:
        sd = self.stepdown
        assert sd is not None
        self.stepdown = None
        successor = sd.successor.node if sd.successor is not None else None
        self.events.append(HandoverFinished(ok, successor, reason))

    def _tick_stepdown(self, now: float) -> None:
        """The primary's side of a hand-over: drain, then offer the role until it is taken."""
        sd = self.stepdown
        if sd is None or not self.is_primary or self.view is None:
            return
        if now > sd.started + self.cfg.handover_timeout or not self.view.backups:
            why = "no backup left" if not self.view.backups else "nobody took over in time"
            if self.promised > self.view.number:
                self._reset(f"hand-over failed ({why}) after promising a newer view", now)
                return
            self._end_stepdown(False, f"{why}; primary again")
            return  # ordering resumes on the next flush
        if sd.phase is HandoverPhase.DRAINING:
            drained = self.commit == self.delivered and self.annexed_upto == self.delivered
            if not drained or self.confirming is not None:
                return
            sd.phase = HandoverPhase.OFFERED
        if now >= sd.last_sent + self.cfg.proposal_retry:
            sd.last_sent = now
            sd.successor = self.view.members[1]  # a removal meanwhile moves the next rank up
            self.offered_to = sd.successor
            self._emit(Handover(sd.successor, self.delivered))

    def _tick_voted(self, now: float) -> None:
        """We voted for our successor: if it does not finish, take over again (ordinarily)."""
        sd = self.stepdown
        assert sd is not None and sd.successor is not None and self.view is not None
        gone = self._failed(sd.successor.node, now)
        if not gone and now <= sd.voted_at + self.cfg.handover_timeout:
            return
        why = "failed" if gone else "did not announce a view in time"
        self._end_stepdown(False, f"successor {sd.successor.node} {why}")
        targets = {m.node for m in self.view.members if m != self.me and self._failed(m.node, now)}
        self.candidacy = Candidacy(targets, now)
        self._set_role(Role.CANDIDATE, f"hand-over to node {sd.successor.node} {why}")
        self._tick_candidate(now)

    def _tick_admission(self, now: float) -> None:
        r = self.retained
        if r is not None and (
            now > r.since + self.cfg.join_timeout
            or (self.view is not None and r.joiner.node in self.view)
        ):
            self.retained = None
        adm = self.admission
        if adm is None or self.view is None:
            return
        j = adm.joiner.node
        acked = self.acks.get(j, 0)
        if adm.installed and acked > adm.progress[0]:
            adm.progress = (acked, now)
        if now > max(adm.started, adm.progress[1]) + self.cfg.join_timeout or self._failed(j, now):
            self._end_admission(now)
        elif adm.installed:
            if not adm.freeze and (
                acked >= self.delivered
                or (
                    adm.live
                    and (
                        acked >= self.commit
                        or acked >= self.delivered - CATCH_UP_SLACK
                        or now >= adm.installed_at + self.cfg.join_timeout / 2
                    )
                )
            ):
                # Caught up with the commit point (or close to the head, or long enough): pause
                # ordering for the last few entries, so the joiner holds every input ordered
                # before it becomes a member (a reply the gateways release on the old view's
                # backups is then held by the joiner too). The commit point alone is not
                # enough: a lone primary commits each input as it orders it, so under steady
                # load a joiner one round trip behind would never reach it and time out.
                adm.freeze = True
            if (
                adm.freeze
                and self.acks.get(j, 0) >= self.delivered
                and self.annexed_upto == self.delivered
                and self.confirming is None
            ):
                # Every existing member must know the joiner before it acts as a member: a
                # backup that missed it could otherwise take over without it, unfenced.
                view = self.view.plus(adm.joiner, self.view.number + 1)
                waiting = {m.node for m in self.view.backups}
                self._end_admission()
                self._install_view(view, now)
                self.confirming = Confirming(adm.joiner, view, waiting)
                self._emit(AcceptBackup(view.members, j))
                self._announce_reign()
        elif adm.chunks is not None and now > adm.last_sent + self.cfg.join_retry * 5:
            self._send_chunks(adm, range(len(adm.chunks)), now)
        elif adm.parts is not None and now >= adm.last_sent + self.cfg.join_retry:
            # Repeated until the joiner reports the snapshot installed: the offer is one
            # datagram that may be lost, and a failed fetch is retried on the next one.
            self._send_offer(adm, now)

    def _tick_confirming(self, now: float) -> None:
        conf = self.confirming
        if conf is None or self.view is None:
            return
        if conf.joiner.node not in self.view:
            self.confirming = None
        elif now >= conf.last_sent + self.cfg.proposal_retry:
            conf.view = self.view  # a removal meanwhile renumbers the view: re-announce
            conf.last_sent = now
            conf.waiting &= set(self.view.nodes)
            done = not (conf.waiting - {conf.joiner.node})
            self._emit(AcceptBackup(self.view.members, conf.joiner.node, confirmed=done))

    def _tick_backup(self, now: float) -> None:
        assert self.view is not None
        if self.stepdown is not None:
            self._tick_voted(now)
            return
        rank = self.view.rank(self.me.node)
        if rank is None:
            return
        above = self.view.members[: rank - 1]
        if above and all(self._failed(m.node, now) for m in above):
            if self.suspect_since is None:
                self.suspect_since = now
            # The primary fences a silent backup after the silence timeout alone; a backup
            # waits one more rank_delay per rank, so on a partition where both sides still
            # reach the witness the primary's fence lands first. A flat heartbeat wire is
            # proof the node above is not running: then there is no race and no wait.
            proven_dead = all(self._proven_down(m.node, now) for m in above)
            delay = 0.0 if proven_dead else (rank - 1) * self.cfg.rank_delay
            if now >= self.suspect_since + delay:
                targets = {
                    m.node for m in self.view.members if m != self.me and self._failed(m.node, now)
                }
                self.candidacy = Candidacy(targets, now)
                self._set_role(
                    Role.CANDIDATE,
                    f"primary {self.view.primary.node} suspected; fencing {sorted(targets)}",
                )
                self._tick_candidate(now)
        else:
            self.suspect_since = None

    def _tick_candidate(self, now: float) -> None:
        c = self.candidacy
        if c is None:
            return
        if c.phase is Phase.FENCING:
            for t in sorted(c.targets):
                self._request_fence(t, f"replacing failed node {t}", now)
            if all(self._excludable(t) for t in c.targets):
                self._propose(now)
        elif c.phase is Phase.PROPOSING:
            missing = [m.node for m in c.members if m.node not in c.votes]
            if now > c.started + self.cfg.vote_timeout:
                silent = {n for n in missing if self._failed(n, now)} or set(missing)
                c.targets |= silent
                c.phase = Phase.FENCING
                self._tick_candidate(now)
            elif now >= c.last_sent + self.cfg.proposal_retry:
                c.last_sent = now
                self.out.emit(
                    ProposePrimary(c.members),
                    src_group=self.group,
                    dst_group=self.group,
                    view=c.number,
                )
        elif c.phase is Phase.RECOVERING:
            if self._failed(c.source, now):
                c.targets.add(c.source)
                c.phase = Phase.FENCING
                self._tick_candidate(now)
            elif now >= c.last_sent + self.cfg.proposal_retry:
                c.last_sent = now
                self._emit(Nack(c.source, NackKind.ENTRIES, ((self.delivered + 1, c.target),)))

    def _tick_joining(self, now: float) -> None:
        f = self.fetch
        if f is not None and (
            self._failed(f.source.node, now) or now > f.started + self.cfg.join_timeout
        ):
            self.fetch = None
        a = self.assembly
        if a is not None:
            if self._failed(a.source.node, now) or now > a.started + self.cfg.join_timeout:
                self.assembly = None
            elif now >= a.last_nack + self.cfg.join_retry:
                a.last_nack = now
                missing = [i for i in range(a.total) if i not in a.chunks]
                ranges = tuple((i, i) for i in missing[:16])
                self._emit(Nack(a.source.node, NackKind.STATE, ranges, a.snapshot_id))
                return
        hint = self.primary_hint
        if hint is not None and now - hint[1] < self.cfg.silence_timeout:
            if now >= self.last_join_sent + self.cfg.join_retry:
                self.last_join_sent = now
                self.out.emit(ProposeBackup(), src_group=self.group, dst_group=self.group)
            return
        # Found a new group only when every configured node is up, heard, and has no view:
        # state lives in memory, so a node that cannot be heard may be a partitioned primary
        # holding every acknowledged write; founding without it (or fencing it) could lose them.
        quiet_since = max(self.started, self.viewful_heard)
        if now < quiet_since + self.cfg.found_timeout:
            return
        heard = {n for n, t in self.viewless_heard.items() if now - t < self.cfg.silence_timeout}
        if heard | {self.me.node} == set(self.cfg.nodes) and self.me.node == min(self.cfg.nodes):
            self._found(now)

    def _found(self, now: float) -> None:
        number = max(self.promised, self.max_view_seen) + 1
        self.candidacy = None
        view = View(number, (self.me,))
        self._install_view(view, now)
        self._set_role(Role.PRIMARY, f"founded {view.describe()}")

    def _tick_learning(self, now: float) -> None:
        src = self.learning_from
        if self.delivered > self.learning_progress[0]:
            # Catching up counts as progress: only a learner stuck for join_timeout gives up.
            self.learning_progress = (self.delivered, now)
        if (
            src is None
            or now > max(self.learning_since, self.learning_progress[1]) + self.cfg.join_timeout
            or now > self.learning_since + LEARNING_LIMIT * self.cfg.join_timeout
            or self._failed(src.node, now)
        ):
            self._reset("state transfer did not complete", now)
        elif not self.restoring and now >= self.last_install_ack + self.cfg.join_retry:
            self._report_installed(now)  # repeated: it may be lost

    # ------------------------------------------------------------------ flush

    def flush(self, now: float) -> None:
        """Emit what is due: ordering, replies, acks, NACKs, confirmations."""
        if self.is_primary:
            self._tick_stepdown(now)
            self._order_ready()
            self._primary_commit()
            self._flush_outbound(now)
            self._flush_acks(now)
            if self.cfg.annexed:
                lo = max(self.record_sent_upto, self.commit) + 1
                if self.annexed_upto >= lo:
                    fresh = [self.log[i] for i in range(lo, self.annexed_upto + 1)]
                    self._send_annexes(fresh, with_records=True)
                    self.record_sent_upto = self.annexed_upto
            elif self.delivered > max(self.record_sent_upto, self.commit):
                self._emit(Order(self.commit))
        elif self.role in (Role.BACKUP, Role.LEARNING, Role.CANDIDATE):
            self._try_deliver()
            if self.delivered > self.last_ack_sent and self.role is not Role.CANDIDATE:
                self.last_ack_sent = self.delivered
                self.last_ack_time = now
                self._emit(SecondAck(self.delivered, self._followed() or Member(0, 0)))
            self._maybe_nack_entries(now)

    def _maybe_nack_entries(self, now: float) -> None:
        if self.role not in (Role.BACKUP, Role.LEARNING):
            return
        primary = self.learning_from if self.role is Role.LEARNING else None
        if primary is None and self.view is not None:
            primary = self.view.primary
        if primary is None:
            return
        end = self.known_end
        if self.pending:
            end = max(end, max(self.pending))
        if self.annex_pending:
            end = max(end, max(self.annex_pending))
        if end <= self.delivered or now < self.last_nack + self.cfg.nack_delay * 4:
            return
        self.last_nack = now
        self._emit(Nack(primary.node, NackKind.ENTRIES, ((self.delivered + 1, end),)))

    def _flush_outbound(self, now: float) -> None:
        requires = tuple(m.node for m in self.view.backups) if self.view is not None else ()
        for (g, c), ob in self.outbound.items():
            # Output leaves before its input is committed (the destination holds it until it
            # learns the commit, from the backups' SECOND_ACKs): one hop sooner than waiting.
            ob.released = self.annexed_upto
            batches = ob.take_batches(now, self.cfg.batch_bytes, requires)
            if not batches:
                continue
            ib = self.inbound.get((g, c))
            ack = ib.stable if ib is not None else 0
            for data in batches:
                self._emit(data, dst_group=g, conn_id=c, seq=data.entries[0].seq, ack=ack)
            if ib is not None:
                self.ack_sent[(g, c)] = ack

    def _flush_acks(self, now: float) -> None:
        for key, ib in self.inbound.items():
            if ib.stable > self.ack_sent.get(key, 0):
                self.ack_sent[key] = ib.stable
                self._emit(FirstAck(ib.credit), dst_group=key[0], conn_id=key[1], ack=ib.stable)
            due = self.nacks_due.get(key)
            if due is not None and due <= now:
                del self.nacks_due[key]
                gaps = ib.gaps()
                if gaps:
                    self._emit(
                        Nack(key[0] & 0x7FFF, NackKind.MESSAGES, tuple(gaps)),
                        dst_group=key[0],
                        conn_id=key[1],
                    )

    def _followed(self) -> Member | None:
        """The primary whose log our delivered index counts in."""
        if self.role is Role.LEARNING:
            return self.learning_from
        return self.view.primary if self.view is not None else None

    def heartbeat(self, now: float) -> None:
        """Liveness; a primary's carries its view, log end and commit point; a backup's names
        the primary it follows (so its delivered index can serve as a confirmation)."""
        members: tuple[Member, ...] = ()
        if self.view is not None and self.is_primary:
            members = self.view.members
        elif self.role is Role.BACKUP and (followed := self._followed()) is not None:
            members = (followed,)
        self._emit(Heartbeat(self.role, members, self.delivered, self.commit))

    def next_deadline(self) -> float | None:
        best: float | None = None
        if self.is_primary:
            for ob in self.outbound.values():
                ob.released = self.annexed_upto
                t = ob.next_deadline()
                if t is not None and (best is None or t < best):
                    best = t
            for t in self.nacks_due.values():
                if best is None or t < best:
                    best = t
        return best

    # ------------------------------------------------------------------ status

    def _admission_status(self) -> dict[str, object] | None:
        """The join in progress on this primary (for ``appliance status``): who, how far."""
        adm = self.admission
        if adm is None:
            return None
        return {
            "joiner": adm.joiner.node,
            "snapshot": adm.snapshot_id,
            "index": adm.index,
            "installed": adm.installed,
            "frozen": adm.freeze,
            "joiner_acked": self.acks.get(adm.joiner.node, 0),
            "annexed_upto": self.annexed_upto,
            "confirming": self.confirming is not None,
        }

    def status(self) -> dict[str, object]:
        return {
            "role": self.role.name.lower(),
            "view": self.view.number if self.view else None,
            "members": [m.node for m in self.view.members] if self.view else [],
            "primary": self.view.primary.node if self.view else None,
            "rank": self.view.rank(self.me.node) if self.view else None,
            "delivered": self.delivered,
            "commit": self.commit,
            "log_entries": len(self.log),
            "handover": self.stepdown.phase.value if self.stepdown is not None else None,
            "admission": self._admission_status(),
            "state_fetches": self.fetches,
            "state_fetch_failures": self.fetch_failures,
            "state_fetch_last_failure": self.last_fetch_failure,
            "learners_adopted": self.adopted,
        }


_Handler = Callable[[GroupMember, Header, Any, float, bool], None]
_HANDLERS: dict[type, _Handler] = {
    SecondAck: GroupMember._on_second_ack,
    Nack: GroupMember._on_nack,
    Order: GroupMember._on_order,
    Heartbeat: GroupMember._on_heartbeat,
    ProposePrimary: GroupMember._on_propose_primary,
    PrimaryVote: GroupMember._on_primary_vote,
    NewView: GroupMember._on_new_view,
    ProposeBackup: GroupMember._on_propose_backup,
    AcceptBackup: GroupMember._on_accept_backup,
    RemoveBackup: GroupMember._on_remove_backup,
    AcceptAck: GroupMember._on_accept_ack,
    StateChunk: GroupMember._on_state,
    Handover: GroupMember._on_handover,
    StateOffer: GroupMember._on_state_offer,
}
