"""Three real agents against hostile datagrams and a timing fault.

* Garbage, replayed, tampered, truncated and wrong-key datagrams sent to the cluster's multicast
  group are dropped and counted by reason on every node, while a client keeps writing through
  every node and loses nothing.
* A primary frozen (SIGSTOP) beyond the suspicion timeout is a timing fault: a backup fences it
  and takes over. Here the fence device reports success without killing anything (a relay that
  clicked while the node kept running), so after SIGCONT the old primary is still alive and
  holding its old view: it must step down on hearing the newer view and rejoin as a backup,
  never act as primary again, and no acknowledged write may be lost.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.node.config import default_cluster_id
from appliance.protocols.wire import Datagram, Header, MessageType
from appliance.protocols.wire.datagram import encode as encode_datagram
from tests.node.test_agent import NAMES, Cluster, Node, formed, wait_for, write_config
from tests.writer import Writer


def info(node: Node) -> dict[str, object]:
    fields: dict[str, object] = node.client(timeout=1).info("replication")
    return fields


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Cluster]:
    config, nodes = write_config(tmp_path)
    c = Cluster(tmp_path, config, nodes)
    try:
        for name in NAMES:
            c.start(name)
        wait_for("all three nodes in one view", lambda: formed(c), 30)
        yield c
    finally:
        c.stop_all()


def targets(nodes: list[Node]) -> list[tuple[str, int]]:
    return [("127.0.0.1", n.port) for n in nodes]


def hostile_datagrams(captured: list[bytes], cluster_id: int, rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for d in captured:
        out.append(d)  # a replay of a real datagram
        flipped = bytearray(d)
        flipped[rng.randrange(len(d))] ^= 0xFF
        out.append(bytes(flipped))  # tampered: the HMAC no longer matches
        out.append(d[: rng.randrange(1, 40)])  # truncated
    for _ in range(50):
        out.append(rng.randbytes(rng.randrange(0, 1500)))  # noise
    header = Header(MessageType.HEARTBEAT, cluster_id, 1, 99, 1, 0, 0, 0, 1, 0, 0)
    out.append(encode_datagram(Datagram(header, (), b""), os.urandom(32)))  # another key
    out.append(b"\x00" * 3000)  # oversize
    return out


def test_hostile_datagrams_are_counted_and_lose_nothing(three: Cluster) -> None:
    cfg = tomllib.loads(three.config.read_text())
    group, port = cfg["network"]["multicast_group"], cfg["network"]["port"]
    nodes = list(three.nodes.values())
    writer = Writer(targets(nodes))
    writer.start()
    try:
        # Capture some of the cluster's own traffic, to replay and tamper with.
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((group, port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        rx.settimeout(2)
        captured = [rx.recv(65536) for _ in range(20)]
        rx.close()
        cluster_id = default_cluster_id(cfg["cluster"]["name"])
        sent = hostile_datagrams(captured, cluster_id, random.Random(5))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        for _ in range(3):
            for d in sent:
                tx.sendto(d, (group, port))
        tx.close()

        def counted(n: Node) -> dict[str, object] | None:
            fields = info(n)
            # A tampered copy of a node's own datagram is dropped by that node unread, as
            # looped back: nothing from itself is ever acted upon.
            total = int(str(fields.get("datagrams_rejected", 0)))
            total += int(str(fields.get("datagrams_looped_back", 0)))
            return fields if total >= len(sent) * 3 - 60 else None

        for n in nodes:
            fields = wait_for(f"{n.name} to count the rejects", lambda n=n: counted(n), 10)
            for reason in ("bad_hmac", "truncated", "oversize"):
                assert int(str(fields.get(f"datagrams_rejected_{reason}", 0))) > 0, fields
            assert str(fields["node"]) == str(nodes.index(n) + 1)  # each node's own section
        wait_for("more writes", lambda: len(writer.acked) > 100 or None, 20)
    finally:
        writer.finish()
    try:
        writer.check(targets(nodes))
    except BaseException:
        print(three.logs(), file=sys.stderr)
        raise


FAKE_FENCE = """\
import sys
with open({log!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
"""


def test_frozen_primary_is_fenced_replaced_and_never_primary_again(tmp_path: Path) -> None:
    config, nodes = write_config(tmp_path)
    fence_log = tmp_path / "fenced.txt"
    (tmp_path / "fence.py").write_text(FAKE_FENCE.format(log=str(fence_log)))
    cluster = Cluster(tmp_path, config, nodes)
    writer: Writer | None = None
    try:
        for name in NAMES:
            cluster.start(name)
        old = wait_for("all three nodes in one view", lambda: formed(cluster), 30)
        others = [n for n in nodes.values() if n is not old]
        writer = Writer(targets(others))
        writer.start()
        wait_for("writes", lambda: len(writer.acked) > 20 or None, 10)
        assert old.proc is not None
        old.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        new = wait_for(
            "a new primary",
            lambda: next((n for n in others if info(n).get("llft_role") == "primary"), None),
            20,
        )
        took = time.monotonic() - frozen_at
        assert f"{old.name} off" in fence_log.read_text()
        acked_before_thaw = len(writer.acked)
        old.proc.send_signal(signal.SIGCONT)

        def rejoined() -> bool | None:
            fields = info(old)
            return fields.get("llft_role") == "backup" or None

        wait_for("the old primary back as a backup", rejoined, 20)
        wait_for(
            "writes after the thaw", lambda: len(writer.acked) > acked_before_thaw + 50 or None, 20
        )
        writer.finish()
        # Never primary again: its log shows no second PRIMARY role after the freeze, and the
        # new primary kept its role throughout.
        old_log = (tmp_path / f"{old.name}.log").read_text()
        assert old_log.count("role PRIMARY") == 1, old_log
        # On waking it knew it had stood still and fenced nobody: silence it could not hear is
        # no evidence against the nodes that replaced it.
        assert "stood still" in old_log
        fenced = {line.split()[0] for line in fence_log.read_text().splitlines()}
        assert fenced == {old.name}, fence_log.read_text()
        assert info(new).get("llft_role") == "primary"
        writer.check(targets(list(nodes.values())))
        assert took < 10
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        if writer is not None:
            writer.halt.set()
        for n in nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
        cluster.stop_all()
