"""The CPU a join spends, outside the cluster: the control for the join's latency figure.

On this machine every node of a lab shares the same cores, so a joiner booting and loading its
snapshot, and the primary's forked child encoding it, take CPU from the agents serving the
client. On separate boards they would not. This process does that work and nothing else: it
imports the agent (the joiner's start-up), reads a snapshot of the store and restores it (the
joiner's load) after fetching it over TCP from a forked sender and hashing it as it arrives (the
transfer: the primary's serving and the joiner's fetch), and forks a child at the snapshot
encoder's niceness that encodes the restored store again (the primary's child). It joins
nothing and speaks no protocol: the client latency measured while it runs is what the same
CPU costs the cluster without any protocol work (what it leaves out: the joiner following the
group's traffic while it loads, and the admission).

``python -m benchmarks.join_cpu SNAPSHOT`` prints the wall-clock time at which its start-up
ended (the window starts there, as a join's starts at the joiner's first log line) once done.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["main", "write_snapshot"]


def write_snapshot(path: Path, keys: int, value: bytes) -> None:
    """The store the faults benchmark preloads (``preload:<i>`` = ``value``), as a snapshot."""
    from appliance.protocols.replication import DeterminismProxy
    from appliance.service.kv import KVStore

    store = KVStore(DeterminismProxy())
    for i in range(keys):
        store.execute([b"SET", b"preload:%d" % i, value])
    path.write_bytes(store.snapshot())


def _transfer(blob: bytes, digest: bytes) -> bytes:
    """The snapshot over TCP on loopback, as a joiner fetches it: a forked sender writes it in
    the primary's chunks, this process reads it in the joiner's and hashes it as it arrives,
    then checks it against ``digest`` (as a joiner does against the offer's)."""
    from appliance.node.state_transfer import CHUNK

    with socket.create_server(("127.0.0.1", 0)) as server:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                with socket.create_connection(server.getsockname()) as out:
                    view = memoryview(blob)
                    for i in range(0, len(view), CHUNK):
                        out.sendall(view[i : i + CHUNK])
                code = 0
            finally:
                os._exit(code)
        conn, _ = server.accept()
        h = hashlib.sha256()
        parts = []
        with conn:
            while chunk := conn.recv(CHUNK):
                h.update(chunk)
                parts.append(chunk)
        _, status = os.waitpid(pid, 0)
    got = b"".join(parts)
    if os.waitstatus_to_exitcode(status) != 0 or h.digest() != digest:
        raise RuntimeError("the snapshot's transfer failed")
    return got


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.join_cpu SNAPSHOT", file=sys.stderr)
        return 2
    import appliance.node.agent  # noqa: F401  (the joiner's start-up)
    from appliance.node.snapshot_child import CHILD_NICENESS
    from appliance.protocols.replication import DeterminismProxy
    from appliance.service.kv import KVStore

    blob = Path(argv[0]).read_bytes()
    digest = hashlib.sha256(blob).digest()  # the offer's, computed by the primary's child
    started = time.time()
    blob = _transfer(blob, digest)
    store = KVStore.restore(blob, DeterminismProxy())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.nice(CHILD_NICENESS)
            store.snapshot()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("the encoding child failed", file=sys.stderr)
        return 1
    print(f"{started:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
