"""The systems the appliance is compared with, started on loopback by the benchmark itself.

* Redis (Debian's ``redis-server``): alone, and as primary + replica (writes confirmed with
  ``WAIT 1 0``), and with three Sentinels watching the pair;
* PySyncObj (PyPI's ``pysyncobj``): a 3-node ``ReplDict``, every node its own process
  (:mod:`benchmarks.pysyncobj_node`).

Every process is started by the benchmark, lives in its own temporary directory, and is killed
(SIGKILL to its process group) when its ``close`` runs, so an interrupted run leaves nothing
behind. Persistence is off everywhere (no RDB, no AOF, no Raft journal): the appliance keeps its
state in memory too.

Waiting for a system to come up polls it through one connection per process, not a new one per
poll: a new connection takes an ephemeral local port, and a lab booting meanwhile may have
derived that port for one of its agents (lab ports lie in the ephemeral range), which would
then fail to bind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.client import command, connect

__all__ = [
    "Process",
    "PySyncObjCluster",
    "RedisPair",
    "RedisServer",
    "SentinelGroup",
    "free_port",
    "redis_server_binary",
    "wait_for",
]

MASTER = "mymaster"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], timeout: float, period: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(period)


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError(
            "redis-server is not installed (Debian: apt-get install redis-server); "
            "`make bench` installs it when run as root"
        )
    return path


@dataclass(eq=False)
class Process:
    """A child process in its own process group, its output in a log file."""

    argv: list[str]
    log: Path
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a pulled plug: no shutdown. Returns once the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def running(self) -> bool:
        return self.proc.poll() is None


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, optionally a replica of another.

    ``sync_delay``: its ``repl-diskless-sync-delay`` as a primary, seconds it waits for more
    replicas before a full sync; ``None`` keeps Redis's default (5 s).
    """

    def __init__(
        self, workdir: Path, replica_of: int | None = None, sync_delay: int | None = None
    ) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.replica_of = replica_of
        self.sync_delay = sync_delay
        self.process = Process(self._argv(), self.dir / "redis.log", self.dir)
        self._wait_up()

    def _argv(self) -> list[str]:
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        if self.sync_delay is not None:
            argv += ["--repl-diskless-sync-delay", str(self.sync_delay)]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return argv

    def _wait_up(self) -> None:
        probe = self.client()
        try:
            wait_for(f"redis-server on port {self.port}", lambda: bool(probe.ping()), 10)
        finally:
            probe.close()

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return connect("127.0.0.1", self.port, timeout)

    def restart(self, replica_of: int | None) -> None:
        """Start again on the same port (after :meth:`kill`), e.g. as a replica."""
        self.replica_of = replica_of
        self.process = Process(self._argv(), self.dir / "redis.log", self.dir)
        self._wait_up()

    def close(self) -> None:
        self.process.kill()


class RedisPair:
    """A primary and one replica; ``WAIT 1 0`` after a write waits for the replica to hold it.

    ``sync_delay``: both servers' (see :class:`RedisServer`).
    """

    def __init__(self, workdir: Path, sync_delay: int | None = None) -> None:
        self.primary = RedisServer(workdir, sync_delay=sync_delay)
        self.replica = RedisServer(workdir, self.primary.port, sync_delay)
        probe = self.replica.client()
        try:
            wait_for("the replica's link to its primary", lambda: self._linked(probe), 20)
        finally:
            probe.close()

    @staticmethod
    def _linked(replica: redis.Redis) -> bool:
        info = replica.info("replication")
        return info.get("master_link_status") == "up"

    @property
    def processes(self) -> list[Process]:
        return [self.primary.process, self.replica.process]

    def close(self) -> None:
        self.replica.close()
        self.primary.close()


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    """How quickly Sentinel acts: ``down-after-milliseconds`` and ``failover-timeout``."""

    name: str
    down_after_ms: int
    failover_timeout_ms: int


SENTINEL_DEFAULT = SentinelSettings("default", 30_000, 180_000)
SENTINEL_AGGRESSIVE = SentinelSettings("aggressive", 1_000, 2_000)
"""Far below the documentation's own example (5 s / 60 s); lower invites false failovers."""


class SentinelGroup:
    """A primary, a replica and three Sentinels (quorum 2) watching them.

    ``sync_delay``: the pair's (see :class:`RedisServer`).
    """

    def __init__(
        self, workdir: Path, settings: SentinelSettings, sync_delay: int | None = None
    ) -> None:
        self.settings = settings
        self.pair = RedisPair(workdir, sync_delay)
        self.servers = {s.port: s for s in (self.pair.primary, self.pair.replica)}
        self.sentinels: list[tuple[int, Process]] = []
        for _ in range(3):
            port = free_port()
            d = workdir / f"sentinel-{port}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.pair.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {settings.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {settings.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            argv = [redis_server_binary(), str(conf), "--sentinel"]
            self.sentinels.append((port, Process(argv, d / "sentinel.log", d)))
        probes = [connect("127.0.0.1", port, 1.0) for port, _ in self.sentinels]
        try:
            what = "every Sentinel to know the replica and the other two"
            wait_for(what, lambda: self._ready(probes), 30)
        finally:
            for probe in probes:
                probe.close()

    @staticmethod
    def _ready(sentinels: list[redis.Redis]) -> bool:
        for sentinel in sentinels:
            m = command(sentinel, "SENTINEL", "MASTER", MASTER)
            fields = dict(zip(m[::2], m[1::2], strict=True))
            if int(fields[b"num-slaves"]) < 1 or int(fields[b"num-other-sentinels"]) < 2:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers sees it."""
        for port, _ in self.sentinels:
            try:
                addr = command(
                    connect("127.0.0.1", port, 0.5), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                )
            except (redis.RedisError, OSError):
                continue
            return int(addr[1])
        return None

    @property
    def processes(self) -> list[Process]:
        return [*self.pair.processes, *(p for _, p in self.sentinels)]

    def close(self) -> None:
        for _, p in self.sentinels:
            p.kill()
        for s in self.servers.values():
            s.close()


class PySyncObjCluster:
    """Three PySyncObj nodes (``ReplDict``), each its own process with a RESP front end."""

    def __init__(self, workdir: Path, batch: bool, nodes: int = 3) -> None:
        self.batch = batch
        self.dir = Path(tempfile.mkdtemp(prefix="pysyncobj-", dir=workdir))
        self.raft = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
        self.ports = [free_port() for _ in range(nodes)]
        self._probes: dict[int, redis.Redis] | None = None
        """While waiting for the cluster to form: one connection per node, reused by polls."""
        self.nodes: list[Process] = [self._start(i) for i in range(nodes)]
        self._wait_formed("a PySyncObj leader known to every node")

    def _start(self, i: int) -> Process:
        argv = [sys.executable, "-m", "benchmarks.pysyncobj_node"]
        argv += [] if self.batch else ["--no-batch"]
        argv += [self.raft[i], str(self.ports[i]), *(a for a in self.raft if a != self.raft[i])]
        return Process(argv, self.dir / f"node{i}.log", Path(__file__).resolve().parent.parent)

    def _client(self, i: int, timeout: float) -> redis.Redis:
        """A new connection to node ``i``; while :meth:`_wait_formed` polls, the node's probe
        (with the longer of the polls' timeouts)."""
        if self._probes is None:
            return connect("127.0.0.1", self.ports[i], timeout)
        if i not in self._probes:
            self._probes[i] = connect("127.0.0.1", self.ports[i], 2.0)
        return self._probes[i]

    def _wait_formed(self, what: str) -> None:
        self._probes = {}
        try:
            wait_for(what, self.formed, 30)
        finally:
            probes, self._probes = self._probes, None
            for probe in probes.values():
                probe.close()

    def raft_status(self, i: int) -> tuple[str, str]:
        """(state, leader) as node ``i`` sees them; state 2 is leader."""
        reply = command(self._client(i, 1.0), "RAFT")
        state, leader, _ = reply.decode().split()
        return state, leader

    def leader(self) -> int | None:
        """The index of the node every running node names as leader, if they agree."""
        seen = set()
        for i, p in enumerate(self.nodes):
            if p.running():
                seen.add(self.raft_status(i)[1])
        if len(seen) != 1 or "-" in seen:
            return None
        return self.raft.index(seen.pop())

    def formed(self) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        # a write through every node applies: the cluster is connected and caught up
        return all(bool(self._client(i, 2.0).set("probe", "1")) for i in range(len(self.ports)))

    def restart(self, i: int) -> None:
        self.nodes[i] = self._start(i)
        self._wait_formed("the restarted PySyncObj node to catch up")

    @property
    def processes(self) -> list[Process]:
        return list(self.nodes)

    def close(self) -> None:
        for p in self.nodes:
            p.kill()
