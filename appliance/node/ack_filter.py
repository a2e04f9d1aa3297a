"""A kernel socket filter that keeps other backups' confirmations from waking a backup.

Every backup multicasts a ``SECOND_ACK`` per write; only the primary (its commit is made of
them) and a gateway waiting on a reply (its commit evidence) read them. A backup whose gateway
awaits nothing drops them unread (``NodeEngine.receive_datagram``), but each one still wakes it:
on a lab machine that wake-up, not the drop, costs tens of microseconds of CPU, for each of the
other backups on every write. While the engine says it may (``NodeEngine.acks_filterable``), the
host attaches this classic BPF program to its multicast socket, so the kernel discards them
before they are queued; it detaches it before the engine could need one again.

Linux only (``SO_ATTACH_FILTER``); where it cannot be attached the engine's own drop remains.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Protocol

from appliance.protocols.wire.header import MessageType

__all__ = ["SECOND_ACK_FILTER", "attach", "detach"]

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

_UDP_HEADER = 8
"""A UDP socket's filter sees the datagram from its UDP header on."""
_MSG_TYPE_OFFSET = 1
"""The message type's offset in our header (``docs/wire-format.md``)."""

# (code, jt, jf, k): load the type byte; a SECOND_ACK is dropped (return 0 bytes), anything
# else, ours or not, is kept whole (return up to 256 KiB).
SECOND_ACK_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (0x30, 0, 0, _UDP_HEADER + _MSG_TYPE_OFFSET),  # ldb [9]
    (0x15, 0, 1, int(MessageType.SECOND_ACK)),  # jeq #3, next, skip one
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0x40000),  # ret #262144: keep
)


_CODE = b"".join(struct.pack("HBBI", *ins) for ins in SECOND_ACK_FILTER)
"""The program as the kernel reads it: an array of ``struct sock_filter``."""


class _Settable(Protocol):
    def setsockopt(self, level: int, optname: int, value: int | bytes, /) -> None: ...


def attach(sock: _Settable) -> None:
    """Have the kernel drop every SECOND_ACK arriving on ``sock``; raises OSError if it can't."""
    buf = ctypes.create_string_buffer(_CODE, len(_CODE))
    prog = struct.pack("HL", len(SECOND_ACK_FILTER), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)  # the kernel copies the code


def detach(sock: _Settable) -> None:
    """Let every datagram through again."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
