"""``INFO`` through any node describes that node's replication, as a Redis replica does.

The KV service answers ``INFO`` on the primary (it is ordered like every read), so its
``# Replication`` section would describe the primary whichever node a client asked. Users point
``redis-cli -p PORT INFO replication`` at a node to learn that node's role, view and rank, so
the gateway swaps in the section of its own node, with its datagram counters. Every other
section (keyspace, server) stays the primary's, linearizable like any read.
"""

from __future__ import annotations

from typing import Final

from appliance.service.resp import ProtocolError, decode_reply, encode

__all__ = ["wants_replication", "with_local_replication"]

_HEADER: Final = b"# Replication\r\n"
_ALL: Final = frozenset({b"all", b"default", b"everything", b"replication"})


def wants_replication(argv: list[bytes]) -> bool:
    """Whether the reply to this INFO command holds a replication section."""
    return len(argv) == 1 or any(a.lower() in _ALL for a in argv[1:])


def with_local_replication(reply: bytes, fields: dict[str, str]) -> bytes:
    """``reply`` (an INFO reply) with its replication section made of ``fields``."""
    try:
        text = decode_reply(reply)
    except ProtocolError:
        return reply
    if not isinstance(text, bytes) or _HEADER not in text:
        return reply  # an error, or a reply without the section: nothing to replace
    start = text.index(_HEADER)
    end = text.find(b"\r\n\r\n#", start)
    tail = b"" if end < 0 else text[end + 4 :]
    section = _HEADER + b"".join(f"{k}:{v}\r\n".encode() for k, v in fields.items())
    return encode(text[:start] + section + (b"\r\n" + tail if tail else b""))
