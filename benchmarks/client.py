"""The one client every system is driven with: redis-py, with its retries off.

redis-py 8 retries a failed command by default, which would hide a failover from the
measurement (and repeat writes behind the benchmark's back), so every connection is made with
``Retry(NoBackoff(), 0)``.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["VALUE", "command", "connect", "sequential_writes"]

VALUE = b"v" * 100
"""Every write's value: small, since a request and its reply must fit one datagram."""


def connect(host: str, port: int, timeout: float = 5.0) -> redis.Redis:
    return redis.Redis(
        host=host,
        port=port,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def command(r: redis.Redis | redis.client.Pipeline, *args: object) -> Any:
    """A raw command (redis-py's ``execute_command`` is untyped)."""
    return r.execute_command(*args)  # type: ignore[no-untyped-call]


def sequential_writes(
    r: redis.Redis, count: int, prefix: str, wait_replicas: int = 0
) -> list[float]:
    """``count`` SETs one after another; each one's latency in seconds.

    ``wait_replicas``: each SET is followed by ``WAIT n 0`` in the same round trip (a
    non-transactional pipeline), so the write is acknowledged once ``n`` replicas hold it.
    """
    out: list[float] = []
    for i in range(count):
        key = f"{prefix}:{i}"
        t0 = time.perf_counter()
        if wait_replicas:
            pipe = r.pipeline(transaction=False)
            pipe.set(key, VALUE)
            command(pipe, "WAIT", wait_replicas, 0)
            _, acked = pipe.execute()
            if acked < wait_replicas:
                raise RuntimeError(f"WAIT {wait_replicas} 0 returned {acked}")
        else:
            r.set(key, VALUE)
        out.append(time.perf_counter() - t0)
    return out
