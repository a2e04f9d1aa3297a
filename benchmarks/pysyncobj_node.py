"""One PySyncObj node (a 3-node ``ReplDict``) behind a minimal RESP front end.

Run as ``python -m benchmarks.pysyncobj_node [--no-batch] SELF_RAFT CLIENT_PORT PEER_RAFT...``.
``--no-batch`` is ``appendEntriesUseBatch=False``: by default PySyncObj queues commands until
its next tick (``autoTickPeriod``, 50 ms) to batch them; without batching a command wakes the
loop at once (PySyncObj's low-latency setting). The front end
exists so the benchmark drives every system with the same redis-py client code, and so the
client is a separate process from the Raft node, as it is for Redis and the appliance: every
system pays one client round trip over loopback TCP on top of its replication.

* ``SET key value`` is ``ReplDict.set(key, value, sync=True, timeout=...)``: the reply is sent
  once the entry is committed by a majority and applied on this node (a follower forwards it
  to the leader). A failure (no leader, leader changed, timeout) is an ``-ERR`` reply.
* ``GET key``, ``PING``, ``DBSIZE``; ``RAFT`` answers ``state leader self`` (``leader`` is
  ``-`` while there is none) so the harness can find and kill the leader.
* Connection setup commands (``CLIENT ...``) are accepted and ignored.

Commands of one connection are served one after another (pipelined commands are answered in
order, but not replicated together: PySyncObj's synchronous API has no batch).
"""

from __future__ import annotations

import socketserver
import sys
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjException
from pysyncobj.batteries import ReplDict

from appliance.service.resp import (
    Error,
    ProtocolError,
    RequestParser,
    RespValue,
    SimpleString,
    encode,
)

SET_TIMEOUT = 1.0
"""Seconds a synchronous set may wait before the client is told it failed."""


class Node:
    def __init__(self, self_addr: str, peers: list[str], batch: bool) -> None:
        self.data = ReplDict()
        conf = SyncObjConf(appendEntriesUseBatch=batch)
        self.raft = SyncObj(self_addr, peers, consumers=[self.data], conf=conf)

    def execute(self, argv: list[bytes]) -> RespValue:
        name = argv[0].upper()
        if name == b"SET" and len(argv) == 3:
            try:
                self.data.set(argv[1], argv[2], sync=True, timeout=SET_TIMEOUT)
            except SyncObjException as e:
                return Error(f"ERR pysyncobj: {e.errorCode if hasattr(e, 'errorCode') else e}")
            return SimpleString("OK")
        if name == b"GET" and len(argv) == 2:
            value: bytes | None = self.data.get(argv[1])
            return value
        if name == b"DBSIZE":
            return len(self.data)
        if name == b"PING":
            return SimpleString("PONG")
        if name == b"RAFT":
            status: dict[str, Any] = self.raft.getStatus()
            leader = status["leader"]
            text = f"{status['state']} {leader.id if leader else '-'} {status['self'].id}"
            return text.encode()
        if name == b"CLIENT":
            return SimpleString("OK")
        return Error(f"ERR unknown command '{argv[0].decode(errors='replace')}'")


def serve(node: Node, port: int) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            parser = RequestParser()
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                parser.feed(data)
                out = bytearray()
                try:
                    while (argv := parser.next_command()) is not None:
                        out += encode(node.execute(argv))
                except ProtocolError as e:
                    out += encode(Error(f"ERR {e}"))
                    self.request.sendall(out)
                    return
                if out:
                    self.request.sendall(out)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def main(argv: list[str]) -> int:
    batch = True
    if argv and argv[0] == "--no-batch":
        batch, argv = False, argv[1:]
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    self_addr, port, peers = argv[0], int(argv[1]), argv[2:]
    serve(Node(self_addr, peers, batch), port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
