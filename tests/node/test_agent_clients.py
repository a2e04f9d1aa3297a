"""A real agent's client port with the clients people use: redis-py's defaults, AUTH, RESP3.

One node is enough (it founds a group of one); the connection commands never reach the
replicated service, so the cluster's size does not matter to them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.node.test_agent import Cluster, raw_exchange, wait_for, write_config

PASSWORD = "correct horse battery staple"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Cluster]:
    config, nodes = write_config(tmp_path, ("solo",), (f'requirepass = "{PASSWORD}"',))
    c = Cluster(tmp_path, config, nodes)
    try:
        c.start("solo")
        yield c
    finally:
        c.stop_all()


def test_auth_and_resp3_with_redis_py_defaults(guarded: Cluster) -> None:
    port = guarded.nodes["solo"].port
    try:
        # redis-py 8 opens with HELLO 3 AUTH default PASSWORD and then speaks RESP3.
        r = redis.Redis(port=port, password=PASSWORD, socket_timeout=2)
        wait_for("the node to serve", lambda: r.ping() or None, 20)
        assert r.connection_pool.get_protocol() in (None, 3, "3")
        assert r.set("k", "v") is True
        assert r.get("k") == b"v"
        assert r.get("missing") is None  # RESP3 null, not a RESP2 $-1 a RESP3 parser rejects
        assert r.mget("k", "missing") == [b"v", None]
        assert r.client_setname("worker") is True
        assert r.client_getname() == "worker" or r.client_getname() == b"worker"

        # RESP2 clients with a password, too.
        r2 = redis.Redis(port=port, password=PASSWORD, protocol=2, socket_timeout=2)
        assert r2.get("k") == b"v"
        assert r2.get("missing") is None

        # Wrong or missing passwords get Redis' errors, and the node keeps serving.
        once = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH by default
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="nope", socket_timeout=2, retry=once).ping()
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            redis.Redis(port=port, protocol=2, socket_timeout=2, retry=once).get("k")
        assert raw_exchange(port, b"GET k\r\nAUTH nope\r\nQUIT\r\n") == (
            b"-NOAUTH Authentication required.\r\n"
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n"
        )
        auth = f"AUTH {PASSWORD.replace(' ', '_')}\r\n".encode()
        assert raw_exchange(port, auth + b"QUIT\r\n").startswith(b"-WRONGPASS")
        quoted = f'AUTH "{PASSWORD}"\r\nGET k\r\nQUIT\r\n'.encode()
        assert raw_exchange(port, quoted) == b"+OK\r\n$1\r\nv\r\n+OK\r\n"
        assert r.get("k") == b"v"
        assert PASSWORD not in (guarded.dir / "solo.log").read_text()
    except BaseException:
        print(guarded.logs(), file=sys.stderr)
        raise


def test_a_long_pipeline_does_not_hold_the_node_still(tmp_path: Path) -> None:
    """Thousands of commands in one read are submitted in slices, with the loop's timers (the
    heartbeats, the heartbeat wire) run between them: a node that sat on the whole pipeline
    stood still for seconds, which its peers would take for a failure and fence it."""
    import re

    config, nodes = write_config(tmp_path, ("solo",), ())
    c = Cluster(tmp_path, config, nodes)
    try:
        c.start("solo")
        r = redis.Redis(port=c.nodes["solo"].port, protocol=2, socket_timeout=30)
        wait_for("the node to serve", lambda: r.ping() or None, 20)
        pipe = r.pipeline(transaction=False)
        for i in range(5000):
            pipe.set(f"p{i}", i)
        assert pipe.execute() == [True] * 5000
        assert r.get("p4999") == b"4999"
        stills = [
            int(m)
            for m in re.findall(r"stood still for (\d+) ms", (tmp_path / "solo.log").read_text())
        ]
        # Unsliced, this pipeline held the loop for seconds; a busy machine may still add a
        # scheduling gap or two, far shorter than that.
        assert max(stills, default=0) < 600, stills
    except BaseException:
        print(c.logs(), file=sys.stderr)
        raise
    finally:
        c.stop_all()
