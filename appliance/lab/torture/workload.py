"""The fault suite's clients: redis-py threads, each bound to one node, recording every op.

Each client runs a mix of ``SET`` and ``GET`` on a few shared registers and ``INCR`` on a few
shared counters, so several clients contend for every key and a linearizability violation has a
chance to show. Every command is recorded in the :class:`History` with its invoke and complete
times and what the client learned:

* a reply is ``OK`` (a ``-ERR`` reply from the service is ``FAIL``: the command ran and
  refused, as Redis does, or was refused before it ran);
* a timeout, or a connection that drops after the command was sent, is ``UNKNOWN``: the node
  may have forwarded it and the primary may apply it at any time;
* a connection that cannot be opened sends nothing and is not an op: the client retries after
  a short pause (the node is down or rebooting).

redis-py's own retries are off (``Retry(NoBackoff(), 0)``): a retried ``INCR`` would count
twice, and a retry hides the failover the suite measures.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from appliance.lab.torture.history import History, OpKind, Outcome

__all__ = ["Client", "Target", "Workload"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client sends its commands: one node's client port."""

    node: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    """How many keys of each kind and how fast every client goes."""

    registers: int = 3
    counters: int = 2
    think_s: float = 0.004
    """Pause between two ops of one client: keeps the lab's nodes from starving on 2 cores."""
    timeout_s: float = 3.0
    """A reply later than this makes the op UNKNOWN (longer than any failover should take)."""


@dataclass
class Client:
    """One client thread: its own connection to one node, its own process number."""

    process: int
    target: Target
    history: History
    shape: WorkloadShape
    seed: int
    stop: threading.Event
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    refused_connects: int = 0
    _seq: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    def _connect(self) -> redis.Redis:
        return redis.Redis(
            host=self.target.host,
            port=self.target.port,
            socket_timeout=self.shape.timeout_s,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def run(self) -> None:
        rng = random.Random(self.seed)
        conn = self._connect()
        try:
            while not self.stop.is_set():
                try:
                    conn.ping()
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    # Nothing was sent that could take effect: wait for the node to come back.
                    self.refused_connects += 1
                    conn.close()
                    self.stop.wait(0.05)
                    conn = self._connect()
                    continue
                except redis.ResponseError:
                    pass
                while not self.stop.is_set():
                    if not self._one(conn, rng):
                        conn.close()
                        conn = self._connect()
                        break
                    if self.shape.think_s:
                        self.stop.wait(self.shape.think_s)
        finally:
            conn.close()

    def _one(self, conn: redis.Redis, rng: random.Random) -> bool:
        """One op; False when the connection must be replaced."""
        r = rng.random()
        if r < 0.2:
            kind, key, value = OpKind.INCR, f"c{rng.randrange(self.shape.counters)}", None
        else:
            key = f"r{rng.randrange(self.shape.registers)}"
            if r < 0.6:
                self._seq += 1
                kind, value = OpKind.SET, f"p{self.process}-{self._seq}"
            else:
                kind, value = OpKind.GET, None
        pending = self.history.invoke(self.process, key, kind, value)
        try:
            if value is not None:
                conn.set(key, value)
                result: str | int | None = None
            elif kind is OpKind.GET:
                got = conn.get(key)
                result = got if isinstance(got, str) or got is None else str(got)
            else:
                result = int(conn.incr(key))
        except redis.ResponseError:
            self.history.finish(pending, Outcome.FAIL)
            self.failed += 1
            return True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.history.finish(pending, Outcome.UNKNOWN)
            self.unknown += 1
            return False
        self.history.finish(pending, Outcome.OK, result)
        self.ok += 1
        return True


class Workload:
    """Several clients spread over the nodes, started and stopped together."""

    def __init__(
        self,
        targets: list[Target],
        history: History,
        seed: int,
        clients_per_node: int = 2,
        shape: WorkloadShape | None = None,
    ) -> None:
        self.stop = threading.Event()
        self.history = history
        self.clients = [
            Client(
                process=i,
                target=t,
                history=history,
                shape=shape or WorkloadShape(),
                seed=seed * 1000 + i,
                stop=self.stop,
            )
            for i, t in enumerate(
                (t for t in targets for _ in range(clients_per_node)),
                start=1,
            )
        ]

    def start(self) -> None:
        for c in self.clients:
            c.thread = threading.Thread(target=c.run, name=f"client-p{c.process}", daemon=True)
            c.thread.start()

    def finish(self, timeout: float = 10.0) -> None:
        """Stop every client; an op still waiting for its reply stays UNKNOWN."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for c in self.clients:
            if c.thread is not None:
                c.thread.join(max(0.0, deadline - time.monotonic()))

    def process_nodes(self) -> dict[int, str]:
        """Which node each client process talked to."""
        return {c.process: c.target.node for c in self.clients}
