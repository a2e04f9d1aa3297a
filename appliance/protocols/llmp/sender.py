"""The sending end of an LLMP virtual connection: sent list, retransmission, window.

The primary of the source group multicasts; its backups build and *log* the same messages
without transmitting them, so a new primary can send whatever the old one may not have. Both
keep the same :class:`OutboundConnection`; only ``transmitting`` differs.

A message stays on the sent list until the destination acknowledges it (cumulatively). The
destination acknowledges only what every member of its group holds, so a message is never
dropped here while a failover could still lose it. A sender out of window credit queues and
reports backpressure; it never drops an application message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.protocols.llmp.rto import RttEstimator
from appliance.protocols.messages import DATA_ENTRY_OVERHEAD, Data, DataEntry, data_size


@dataclass(slots=True)
class Outgoing:
    seq: int
    payload: bytes
    after: int = 0
    """Output commit: the sending group's log index this message depends on."""
    first_sent: float | None = None
    last_sent: float | None = None
    retransmitted: bool = False
    due: bool = True


class OutboundConnection:
    """Sent list of one virtual connection (``dst_group``, ``conn_id``)."""

    def __init__(self, dst_group: int, conn_id: int, window: int, rtt: RttEstimator) -> None:
        self.dst_group = dst_group
        self.conn_id = conn_id
        self.window = window
        self.rtt = rtt
        self.next_seq = 1
        self.acked = 0
        self.credit = window
        self.released = float("inf")
        """Output commit: only messages with ``after`` <= this go on the wire (the commit
        index of the sending group; a gateway, a group of one, releases everything)."""
        self._sent: dict[int, Outgoing] = {}
        self.retransmissions = 0

    # -- producing -----------------------------------------------------------------------

    def send(self, payload: bytes, after: int = 0) -> int:
        """Queue an application message; returns its sequence number.

        On a backup the same message may already be logged (overheard from the primary), and
        the destination may even have acknowledged it: then there is nothing to keep.
        """
        seq = self.next_seq
        self.next_seq += 1
        if seq > self.acked and seq not in self._sent:
            self._keep(Outgoing(seq, payload, after))
        return seq

    def _keep(self, m: Outgoing) -> None:
        """Put ``m`` on the sent list, which stays in sequence order (``due`` relies on it)."""
        last = next(reversed(self._sent), 0)  # the highest: the list is sorted
        self._sent[m.seq] = m
        if m.seq < last:  # a higher one was logged (overheard) first
            self._sent = dict(sorted(self._sent.items()))

    def log(self, seq: int, payload: bytes) -> None:
        """A backup records a message its primary sent (overheard), if it lacks it.

        Sequence numbers stay those the backup's own execution assigns (``send``); the
        overheard copy only covers what a backup that does not execute would lack.
        """
        if seq <= self.acked or seq in self._sent:
            return
        self._keep(Outgoing(seq, payload, due=False))

    def take_over(self) -> None:
        """This end becomes the transmitting one: continue after everything known, resend all."""
        self.next_seq = max(self.next_seq, self.acked + 1, max(self._sent, default=0) + 1)
        for m in self._sent.values():
            m.due = True

    def resend_unacked(self) -> None:
        """Put everything already sent but not yet acknowledged on the wire again, now.

        For a sender whose messages are judged by the context they were sent in: the receiver
        of a reply (the gateway's commit gate) counts commit evidence only within the reign the
        reply was sent in, so when the primary installs a new view it resends its unacknowledged
        output under the new one instead of leaving it to the retransmission timer, which has
        backed off by then. Not a timeout: the RTO estimate is left as it is.
        """
        for m in self._sent.values():
            if m.first_sent is not None:
                m.due = True

    # -- acknowledgements ----------------------------------------------------------------

    def on_ack(self, ack: int, now: float, credit: int | None = None) -> bool:
        """Cumulative ack; returns True when it acknowledged something new."""
        if credit is not None:
            self.credit = min(credit, self.window)
        if ack <= self.acked:
            return False
        sample: float | None = None
        for seq in [s for s in self._sent if s <= ack]:
            m = self._sent.pop(seq)
            if not m.retransmitted and m.first_sent is not None:
                sample = now - m.first_sent  # Karn: only never-retransmitted messages
        if sample is not None and sample >= 0:
            self.rtt.on_sample(sample)
        self.acked = max(self.acked, ack)
        return True

    def on_nack(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fast retransmit: the receiver saw a gap."""
        for lo, hi in ranges:
            for seq in range(max(lo, self.acked + 1), min(hi, self.next_seq - 1) + 1):
                m = self._sent.get(seq)
                if m is not None and m.first_sent is not None:
                    m.due = True

    # -- transmitting --------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Highest sequence number the window and the receiver's credit allow in flight."""
        return self.acked + min(self.window, max(self.credit, 1))

    def due(self, now: float) -> list[Outgoing]:
        """Messages to put on the wire now: new ones within window, and expired ones."""
        if not self._sent:  # the usual case on every flush of an idle connection
            return []
        rto = self.rtt.rto
        limit = self.limit
        out = []
        expired = False
        for m in self._sent.values():
            if m.seq > limit or m.after > self.released:
                break
            if m.due or (m.last_sent is not None and m.last_sent + rto <= now):
                if not m.due and m.last_sent is not None:
                    expired = True
                out.append(m)
        if expired:
            self.rtt.on_timeout()
        return out

    def take_batches(
        self, now: float, batch_bytes: int, requires: tuple[int, ...] = ()
    ) -> list[Data]:
        """Everything due now, packed into DATA bodies of at most ``batch_bytes`` (a single
        larger message goes alone), and marked sent."""
        batches: list[Data] = []
        batch: list[DataEntry] = []
        size = data_size(len(requires))
        for m in self.due(now):
            cost = len(m.payload) + DATA_ENTRY_OVERHEAD
            if batch and size + cost > batch_bytes:
                batches.append(Data(tuple(batch), requires))
                batch, size = [], data_size(len(requires))
            batch.append(DataEntry(m.seq, m.payload, m.after))
            size += cost
            self.mark_sent(m, now)
        if batch:
            batches.append(Data(tuple(batch), requires))
        return batches

    def mark_sent(self, m: Outgoing, now: float) -> None:
        if m.first_sent is None:
            m.first_sent = now
        else:
            m.retransmitted = True
            self.retransmissions += 1
        m.last_sent = now
        m.due = False

    def next_deadline(self) -> float | None:
        if not self._sent:
            return None
        rto = self.rtt.rto
        limit = self.limit
        best: float | None = None
        for m in self._sent.values():
            if m.seq > limit or m.after > self.released:
                break
            t = m.last_sent + rto if m.last_sent is not None else None
            if m.due:
                return 0.0
            if t is not None and (best is None or t < best):
                best = t
        return best

    # -- introspection -------------------------------------------------------------------

    @property
    def unacked(self) -> int:
        return len(self._sent)

    @property
    def backlog(self) -> int:
        """Messages waiting for window credit (backpressure)."""
        return max(0, self.next_seq - 1 - self.limit)

    def pending(self) -> list[tuple[int, bytes]]:
        return [(m.seq, m.payload) for m in self._sent.values()]

    def restore(self, next_seq: int, acked: int, pending: Iterable[tuple[int, bytes]]) -> None:
        """Install the state a snapshot carried (a joining backup)."""
        self.next_seq = next_seq
        self.acked = acked
        self._sent = {s: Outgoing(s, p, due=False) for s, p in sorted(pending)}
