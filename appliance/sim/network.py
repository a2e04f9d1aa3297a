"""A simulated multicast LAN: seeded loss, duplication, delay (hence reordering), partitions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetworkFaults:
    loss: float = 0.0
    duplicate: float = 0.01
    base_delay: float = 0.0002
    jitter: float = 0.0003
    outlier: float = 0.01
    outlier_delay: float = 0.005
    sides: dict[int, int] = field(default_factory=dict)
    """Partition: node -> side. Nodes on different sides do not hear each other."""
    witness_side: int | None = 0
    """The side that reaches the fencing witness; None: every side does (worst case)."""


class SimNetwork:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.faults = NetworkFaults()
        self.sent = 0
        self.lost = 0

    def side(self, node: int) -> int:
        return self.faults.sides.get(node, 0)

    def connected(self, a: int, b: int) -> bool:
        return self.side(a) == self.side(b)

    def reaches_witness(self, node: int) -> bool:
        """The fencing health check: can this node still reach its witness (LAN gateway)?"""
        w = self.faults.witness_side
        return w is None or self.side(node) == w

    def arrivals(self, src: int, dests: list[int], now: float) -> list[tuple[float, int]]:
        """When (and whether) each destination receives one multicast datagram."""
        f = self.faults
        out = []
        self.sent += 1
        for d in dests:
            if d == src or not self.connected(src, d):
                continue
            copies = 2 if self.rng.random() < f.duplicate else 1
            for _ in range(copies):
                if self.rng.random() < f.loss:
                    self.lost += 1
                    continue
                delay = f.base_delay + self.rng.expovariate(1 / f.jitter)
                if self.rng.random() < f.outlier:
                    delay += self.rng.uniform(0, f.outlier_delay)
                out.append((now + delay, d))
        return out
