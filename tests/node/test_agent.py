"""Three real agent processes on loopback: clients through every node, then a primary crash.

Every agent runs as ``python -m appliance agent`` with a generated cluster file: nodes on
127.0.0.1 with distinct client ports, a random multicast group and port joined on 127.0.0.1,
and for every node a ``command`` fence device: a script that SIGKILLs that node's agent (by the
pid file the test writes) and confirms it is gone. Waits poll against deadlines; nothing sleeps
for a fixed time.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

NAMES = ("n1", "n2", "n3")

FENCE_SCRIPT = """\
import os, signal, sys, time
node, action = sys.argv[1], sys.argv[2]
if action != "off":
    sys.exit(0)
pid = int(open(os.path.join({dir!r}, node + ".pid")).read())
try:
    os.kill(pid, signal.SIGKILL)
except ProcessLookupError:
    sys.exit(0)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:  # confirm: gone, or a zombie waiting for the test to reap
    try:
        state = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        sys.exit(0)
    if state in ("Z", "X"):
        sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, fn: Callable[[], T | None], timeout: float) -> T:
    """Call ``fn`` until it returns a value other than None (exceptions count as None)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = fn()
        except (redis.RedisError, OSError) as e:
            last, value = e, None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")
        time.sleep(0.02)


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # redis-py's own retries would hide (or repeat) failures
        )


@dataclass
class Cluster:
    dir: Path
    config: Path
    nodes: dict[str, Node]

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        node = self.nodes[name]
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        node.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "agent",
                "--config",
                str(self.config),
                "--node",
                name,
                "--state-dir",
                str(self.dir / "state"),
                "--log-level",
                "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        log.close()
        (self.dir / f"{name}.pid").write_text(str(node.proc.pid))

    def stop_all(self) -> None:
        procs = [n.proc for n in self.nodes.values() if n.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n} ---\n" + (self.dir / f"{n}.log").read_text(errors="replace")[-6000:]
            for n in self.nodes
            if (self.dir / f"{n}.log").exists()
        )


def write_key(tmp_path: Path) -> None:
    """A fresh cluster key, mode 0600, as ``cluster.key`` beside the cluster file."""
    key = tmp_path / "cluster.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)


def write_config(
    tmp_path: Path, names: tuple[str, ...] = NAMES, clients: tuple[str, ...] = ()
) -> tuple[Path, dict[str, Node]]:
    """A cluster file for ``names`` on loopback; ``clients``: extra ``[clients]`` lines."""
    write_key(tmp_path)
    fence = tmp_path / "fence.py"
    fence.write_text(FENCE_SCRIPT.format(dir=str(tmp_path)))
    nodes = {name: Node(name, free_port()) for name in names}
    # Explicit state ports: the default (client_port + 10000) may be another node's client
    # port when the free ports are drawn at random, which the config refuses.
    used = {n.port for n in nodes.values()}
    state_ports: dict[str, int] = {}
    for name in names:
        while (port := free_port()) in used:
            pass
        used.add(port)
        state_ports[name] = port
    lines = [
        "[cluster]",
        f'name = "agent-test-{random.randrange(1 << 30)}"',
        'replication = "semi-active"',
        'key_file = "cluster.key"',
        "[network]",
        f'multicast_group = "239.255.77.{random.randrange(1, 255)}"',
        f"port = {random.randrange(20000, 60000)}",
        'interface = "127.0.0.1"',
        "[timing]",
        "heartbeat_ms = 30",
        "silence_timeout_ms = 400",
        "rank_delay_ms = 50",
        "[clients]",
        "max_clients = 16",
        *clients,
    ]
    for i, node in enumerate(nodes.values(), 1):
        lines += [
            "[[nodes]]",
            f'name = "{node.name}"',
            f"id = {i}",
            'address = "127.0.0.1"',
            f"client_port = {node.port}",
            f"state_port = {state_ports[node.name]}",
            'fence_action = "power-cycle"',
            "off_hold_ms = 100",
            "[[nodes.fence]]",
            'type = "command"',
            f'argv = ["{sys.executable}", "{fence}"]',
            "timeout_ms = 5000",
        ]
    config = tmp_path / "cluster.toml"
    config.write_text("\n".join(lines) + "\n")
    return config, nodes


@dataclass
class NotifySocket:
    """A systemd-style notify socket (AF_UNIX datagrams), drained by a thread as systemd does."""

    path: Path
    messages: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, sock: socket.socket) -> None:
        while not self.done.is_set():
            try:
                self.messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(ns.path))
    sock.settimeout(0.05)
    reader = threading.Thread(target=ns.run, args=(sock,), daemon=True)
    reader.start()
    try:
        yield ns
    finally:
        ns.done.set()
        reader.join(5)
        sock.close()


@pytest.fixture
def cluster(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Cluster]:
    config, nodes = write_config(tmp_path)
    c = Cluster(tmp_path, config, nodes)
    systemd = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    try:
        for name in NAMES:
            c.start(name, systemd if name == "n3" else None)
        yield c
    finally:
        c.stop_all()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def formed(cluster: Cluster) -> Node | None:
    """The primary, once every node is a member of its view (as primary or backup)."""
    roles = {}
    primary, members = None, None
    for n in cluster.nodes.values():
        fields = n.client(timeout=1).info("replication")
        roles[n.name] = fields.get("llft_role")
        if fields.get("llft_role") == "primary":
            primary, members = n, fields.get("members")
    if sorted(str(r) for r in roles.values()) != ["backup", "backup", "primary"]:
        return None
    # The nodes were asked one after another: the primary's answer may predate the last join.
    return primary if isinstance(members, list) and len(members) == 3 else None


def role_of(node: Node) -> str | None:
    info = node.client(timeout=1).info("replication")
    role = info.get("llft_role")
    return str(role) if role is not None else None


def test_three_agents_serve_and_survive_primary_crash(
    cluster: Cluster, notify_socket: NotifySocket
) -> None:
    nodes = list(cluster.nodes.values())
    try:

        def pong(n: Node) -> bool | None:
            return bool(n.client(timeout=1).ping()) or None

        for n in nodes:
            wait_for(f"PONG from {n.name}", partial(pong, n), 20)

        # Writes and reads through every node.
        acked: dict[str, bytes] = {}
        for i, n in enumerate(nodes):
            r = n.client()
            assert r.set(f"key{i}", f"value{i}") is True
            acked[f"key{i}"] = f"value{i}".encode()
        for n in nodes:
            r = n.client()
            for k, v in acked.items():
                assert r.get(k) == v, (n.name, k)

        # A counter incremented through different nodes.
        clients = [n.client() for n in nodes]
        for i in range(50):
            clients[i % 3].incr("counter")
        for r in clients:
            assert r.get("counter") == b"50"
        acked["counter"] = b"50"

        # Requests through the primary's own node ride whole in its ORDERs, never multicast
        # on their own; those through a backup's node are multicast as ever.
        carried = {}
        for n in nodes:
            fields = n.client(timeout=1).info("replication")
            carried[n.name] = (fields["llft_role"], int(fields["datagrams_requests_in_order"]))
        assert next(c for r, c in carried.values() if r == "primary") > 0, carried
        assert all(c == 0 for r, c in carried.values() if r != "primary"), carried

        # Backups awaiting no reply can have the kernel drop the other backups' confirmations
        # (not while this INFO is open: it is a command of that node's clients).
        for n in nodes:
            assert n.client(timeout=1).info("replication")["acks_filter"] == "available"

        # DEBUG DIGEST is each replica's own: once writes stop, the replicas agree on it.
        def digests_agree() -> set[bytes] | None:
            got = {n.client(timeout=1).execute_command("DEBUG", "DIGEST") for n in nodes}
            return got if len(got) == 1 else None

        [digest] = wait_for("equal DEBUG DIGEST on every node", digests_agree, 10)
        assert len(digest) == 40 and digest != b"0" * 40
        info = nodes[0].client(timeout=1).info("replication")
        assert "state_digest" not in info  # INFO stays cheap: no walk over every key

        # Pipelining keeps each connection's replies in its order.
        pipe = nodes[1].client().pipeline(transaction=False)
        for i in range(20):
            pipe.set(f"p{i}", str(i))
            pipe.get(f"p{i}")
        results = pipe.execute()
        assert results == [x for i in range(20) for x in (True, str(i).encode())]
        acked.update({f"p{i}": str(i).encode() for i in range(20)})

        # Bad clients get an error and lose only their own connection.
        port = nodes[0].port
        assert raw_exchange(port, b"*1\r\n$4\r\nPING\r\n*x\r\n").startswith(
            b"+PONG\r\n-ERR Protocol error"
        )
        assert raw_exchange(port, b"PING\r\nQUIT\r\n") == b"+PONG\r\n+OK\r\n"
        # QUIT behind a write still being replicated: the write's reply first, then QUIT's.
        assert raw_exchange(port, b"SET quitting 1\r\nQUIT\r\n") == b"+OK\r\n+OK\r\n"
        acked["quitting"] = b"1"
        # One connection beyond max_clients (16) is told so and closed; the others serve.
        held: list[socket.socket] = []
        try:
            refused = b""
            for _ in range(17):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                held.append(s)
                s.sendall(b"PING\r\n")
                if (answer := s.recv(100)) != b"+PONG\r\n":
                    refused = answer
                    break
            assert refused == b"-ERR max number of clients reached\r\n"
            assert held[0].sendall(b"PING\r\n") is None and held[0].recv(100) == b"+PONG\r\n"
        finally:
            for s in held:
                s.close()
        with pytest.raises(redis.ResponseError, match="request too large"):
            nodes[0].client().set("big", b"x" * 5000)
        assert nodes[0].client().ping() is True

        # Kill the primary once every node has joined; a backup fences it (the test device
        # confirms) and takes over.
        primary = wait_for("all three nodes in one view", lambda: formed(cluster), 30)
        assert primary.proc is not None
        primary.proc.send_signal(signal.SIGKILL)
        primary.proc.wait(5)
        survivors = [n for n in nodes if n is not primary]

        def write_after(i: int) -> bool | None:
            r = survivors[i % 2].client(timeout=1)
            return bool(r.set(f"after{i}", f"a{i}")) or None

        started = time.monotonic()
        wait_for("a write after the primary's crash", partial(write_after, 0), 20)
        failover = time.monotonic() - started
        acked["after0"] = b"a0"
        for i in range(1, 10):
            wait_for(f"write after{i}", partial(write_after, i), 10)
            acked[f"after{i}"] = f"a{i}".encode()

        new_primary = wait_for(
            "a new primary",
            lambda: next((n for n in survivors if role_of(n) == "primary"), None),
            10,
        )
        assert new_primary is not primary
        for n in survivors:
            r = n.client()
            for k, v in acked.items():
                assert r.get(k) == v, (n.name, k)
        assert failover < 20
        assert "fence of node" in cluster.logs()

        # n3 spoke sd_notify: joined, status lines, watchdog pings, then stopping on SIGTERM.
        n3 = cluster.nodes["n3"]
        if n3.proc is not None and n3.proc.poll() is None:
            n3.proc.send_signal(signal.SIGTERM)
            assert n3.proc.wait(5) == 0
        wait_for("STOPPING=1", lambda: "STOPPING=1" in notify_socket.messages or None, 5)
        got = list(notify_socket.messages)
        assert "READY=1" in got
        assert any(m.startswith("STATUS=backup view") for m in got), got
        assert "WATCHDOG=1" in got
        assert got[-1] == "STOPPING=1"
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    (tmp_path / "cluster.key").chmod(0o644)
    cmd = [sys.executable, "-m", "appliance", "agent", "--config", str(config), "--node", "n1"]
    p = subprocess.run(cmd, capture_output=True, timeout=20)
    assert p.returncode == 2
    assert b"chmod 600" in p.stderr
    (tmp_path / "cluster.key").chmod(0o600)
    p = subprocess.run([*cmd[:-1], "nope"], capture_output=True, timeout=20)
    assert p.returncode == 2
    assert b"no node named 'nope'" in p.stderr
