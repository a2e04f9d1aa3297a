"""The receiving end of an LLMP virtual connection: in-order delivery, gaps, duplicates.

Every member of the destination group listens on the virtual port and buffers what arrives.
The primary delivers in sequence order and decides the group's total order; a backup delivers
a message only when the primary's ordering record names it (``take``). Gaps are reported so the
primary can NACK the sender (fast retransmit) instead of waiting for its timeout.
"""

from __future__ import annotations

from collections.abc import Iterable


def gap_ranges(done: int, have: Iterable[int], max_ranges: int = 16) -> list[tuple[int, int]]:
    """Inclusive ranges missing between ``done`` (everything up to it is handled) and the
    highest number in ``have``: what to NACK."""
    out: list[tuple[int, int]] = []
    expect = done + 1
    for s in sorted(have):
        if s > expect:
            out.append((expect, s - 1))
            if len(out) >= max_ranges:
                break
        expect = s + 1
    return out


class InboundConnection:
    def __init__(self, src_group: int, conn_id: int, window: int) -> None:
        self.src_group = src_group
        self.conn_id = conn_id
        self.window = window
        self.delivered = 0
        self.stable = 0
        """Highest sequence number every member holds (what the primary acknowledges)."""
        self._buffer: dict[int, bytes] = {}
        self.duplicates = 0
        self.overflows = 0

    def offer(self, seq: int, payload: bytes) -> bool:
        """Buffer a received message; False for a duplicate or one beyond the window."""
        if seq <= self.delivered or seq in self._buffer:
            self.duplicates += 1
            return False
        if seq > self.delivered + self.window:
            self.overflows += 1
            return False
        self._buffer[seq] = payload
        return True

    def pop_ready(self) -> list[tuple[int, bytes]]:
        """Messages now deliverable in sequence order (the primary's path)."""
        out = []
        while (nxt := self.delivered + 1) in self._buffer:
            out.append((nxt, self._buffer.pop(nxt)))
            self.delivered = nxt
        return out

    def peek_next(self) -> tuple[int, bytes] | None:
        nxt = self.delivered + 1
        p = self._buffer.get(nxt)
        return None if p is None else (nxt, p)

    def payload(self, seq: int) -> bytes | None:
        return self._buffer.get(seq)

    def mark_delivered(self, seq: int) -> None:
        """A backup delivered ``seq`` in the primary's order (from the buffer or a repair)."""
        if seq > self.delivered:
            for s in [s for s in self._buffer if s <= seq]:
                del self._buffer[s]
            self.delivered = seq

    def gaps(self, max_ranges: int = 16) -> list[tuple[int, int]]:
        """Missing sequence numbers below the highest one buffered."""
        return gap_ranges(self.delivered, self._buffer, max_ranges)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def credit(self) -> int:
        """How far beyond the acknowledged point the sender may go."""
        return max(0, self.delivered + self.window - len(self._buffer) - self.stable)
