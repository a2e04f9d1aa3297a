"""Asking a lab node about itself over its client port (INFO replication), with no client library.

The lab commands run where only the appliance is installed, so this is a tiny RESP client of
its own: one command per connection, a short timeout, the reply parsed by the service's own
RESP parser.
"""

from __future__ import annotations

import socket

from appliance.service.resp import INCOMPLETE, ReplyParser, RespValue, encode

__all__ = ["Connection", "node_info", "roles_formed"]


class Connection:
    """One RESP connection to a node: a command, then its reply (RESP2, no pipelining)."""

    def __init__(self, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.parser = ReplyParser()

    def call(self, *args: bytes | str | int) -> RespValue:
        """Send one command; its reply (errors are returned as :class:`Error` values)."""
        argv: list[RespValue] = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(encode(argv))
        while (reply := self.parser.next_reply()) is INCOMPLETE:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the node closed the connection")
            self.parser.feed(chunk)
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def node_info(port: int, timeout: float = 0.5, host: str = "127.0.0.1") -> dict[str, str] | None:
    """The node's INFO replication fields, or None if it does not answer in time."""
    try:
        with Connection(port, timeout, host) as c:
            reply = c.call("INFO", "replication")
    except OSError:
        return None
    if not isinstance(reply, bytes):
        return None
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value
    return fields


def roles_formed(infos: dict[str, dict[str, str] | None], powered: set[str]) -> str | None:
    """The primary's name once every powered node is primary or backup of one view."""
    primaries = [n for n in powered if (infos.get(n) or {}).get("llft_role") == "primary"]
    if len(primaries) != 1:
        return None
    view = (infos[primaries[0]] or {}).get("view")
    for n in powered:
        i = infos.get(n) or {}
        if i.get("llft_role") not in ("primary", "backup") or i.get("view") != view:
            return None
    members = (infos[primaries[0]] or {}).get("members", "")
    return primaries[0] if len([m for m in members.split(",") if m]) == len(powered) else None
