"""The client the agent and lab tests run through a fault: SET and INCR, one at a time.

It talks to nodes that stay up through the fault, so every command must complete (none lost
or refused) and every INCR must be applied exactly once: each returns the count acknowledged
so far, and the counter ends equal to it. redis-py's own retries are off, so a failover the
client noticed is reported, not hidden (or an INCR repeated).
"""

from __future__ import annotations

import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

BATCH = 20
"""Keys per MGET when checking: a request must fit one datagram."""


def connect(host: str, port: int, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


class Writer(threading.Thread):
    """Round-robin over ``targets`` (host, port): ``SET counter:i i`` then ``INCR counter``."""

    def __init__(self, targets: list[tuple[str, int]], counter: str = "counter") -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.counter = counter
        self.acked: dict[str, str] = {}
        self.incrs = 0
        self.problems: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        clients = [connect(h, p) for h, p in self.targets]
        i = 0
        while not self.halt.is_set():
            r = clients[i % len(clients)]
            i += 1
            key = f"{self.counter}:{i}"
            try:
                if r.set(key, str(i)):
                    self.acked[key] = str(i)
                got = r.incr(self.counter)
                self.incrs += 1
                if got != self.incrs:
                    self.problems.append(f"INCR #{self.incrs} returned {got}")  # twice, or lost
            except (redis.RedisError, OSError) as e:
                self.problems.append(f"command {i} failed: {e!r}")
                return

    def finish(self) -> None:
        self.halt.set()
        self.join(15)

    def check(self, targets: list[tuple[str, int]]) -> None:
        """No problem seen, and every acknowledged write on every node in ``targets``."""
        assert self.problems == []
        keys = list(self.acked)
        for host, port in targets:
            r = connect(host, port, 10)
            for i in range(0, len(keys), BATCH):
                batch = keys[i : i + BATCH]
                assert r.mget(batch) == [self.acked[k].encode() for k in batch], port
            assert r.get(self.counter) == str(self.incrs).encode(), port
