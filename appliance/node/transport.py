"""UDP multicast transport and the driver that runs a :class:`NodeEngine` on an event loop.

Three layers, each thin:

* :func:`pick_interface` and :func:`open_multicast_socket`: which interface to use (netifaces,
  or an explicit name/address) and a socket joined to the cluster's group on it. Several nodes
  can share one host (SO_REUSEADDR/SO_REUSEPORT, IP_MULTICAST_LOOP): that is the lab.
* :class:`MulticastEndpoint`: the asyncio datagram protocol around that socket. It sends to the
  group, hands every received datagram to a callback and counts what happened.
* :class:`EngineDriver`: feeds the sans-I/O engine with ``now = loop.time()``, sends whatever it
  produces, hands its events to the host and keeps exactly one ``loop.call_at`` timer armed at
  the engine's next deadline. No polling: an idle node wakes up only for its own deadlines
  (heartbeats and ticks) and for datagrams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

import netifaces

from appliance.node import ack_filter
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import Event

__all__ = [
    "DEFAULT_RCVBUF",
    "EngineDriver",
    "MulticastEndpoint",
    "open_multicast_socket",
    "pick_interface",
]

log = logging.getLogger(__name__)

DEFAULT_RCVBUF = 4 << 20
"""Receive buffer asked for (best effort: Linux caps it at ``net.core.rmem_max``)."""

# Linux: a socket bound to INADDR_ANY receives every group joined by any socket on the host
# for its port unless this is 0. Python does not export the constant.
_IP_MULTICAST_ALL: int | None = getattr(
    socket, "IP_MULTICAST_ALL", 49 if sys.platform.startswith("linux") else None
)

Address = Any
"""A datagram's source address as the event loop reports it (``(host, port)`` for IPv4)."""


# -- interface selection ---------------------------------------------------------------------


def _ipv4_addresses() -> dict[str, list[str]]:
    """Interface name -> its IPv4 addresses, in netifaces' order (interfaces without any too)."""
    table: dict[str, list[str]] = {}
    for name in netifaces.interfaces():
        try:
            entries = netifaces.ifaddresses(name).get(netifaces.AF_INET, [])
        except ValueError:  # the interface vanished between the two calls
            continue
        table[name] = [e["addr"] for e in entries if e.get("addr")]
    return table


def _default_gateway_interface() -> str | None:
    gateways = netifaces.gateways()
    default = gateways.get("default")
    if isinstance(default, dict):
        entry = default.get(netifaces.AF_INET)
        if entry is not None:
            return entry[1]
    return None


def _is_loopback(name: str, addr: str) -> bool:
    return name == "lo" or ipaddress.IPv4Address(addr).is_loopback


def _describe(table: dict[str, list[str]]) -> str:
    parts = [
        f"{name} ({', '.join(addrs) if addrs else 'no IPv4 address'})"
        for name, addrs in table.items()
    ]
    return "; ".join(parts) if parts else "none"


def pick_interface(spec: str) -> tuple[str, str]:
    """Resolve the configured interface to ``(interface name, IPv4 address)``.

    ``"auto"``: the interface of the default IPv4 route, else the first non-loopback interface
    with an IPv4 address, else loopback. An interface name selects that interface (its first
    IPv4 address); an IPv4 address selects the interface that holds it. Anything else is a
    :class:`ValueError` that lists what is available.
    """
    spec = spec.strip()
    table = _ipv4_addresses()
    if spec.lower() == "auto":
        gw = _default_gateway_interface()
        if gw is not None and table.get(gw):
            return gw, table[gw][0]
        for name, addrs in table.items():
            for addr in addrs:
                if not _is_loopback(name, addr):
                    return name, addr
        for name, addrs in table.items():
            if addrs:
                return name, addrs[0]
        raise ValueError(
            f"interface 'auto': no interface has an IPv4 address (interfaces: {_describe(table)})"
        )
    if spec in table:
        if not table[spec]:
            raise ValueError(
                f"interface {spec!r} has no IPv4 address; available: {_describe(table)}"
            )
        return spec, table[spec][0]
    try:
        wanted = ipaddress.IPv4Address(spec)
    except ValueError:
        raise ValueError(
            f"interface {spec!r}: no such interface (expected 'auto', an interface name or one "
            f"of its IPv4 addresses); available: {_describe(table)}"
        ) from None
    for name, addrs in table.items():
        if any(ipaddress.IPv4Address(a) == wanted for a in addrs):
            return name, str(wanted)
    raise ValueError(
        f"interface {spec!r}: no interface has this IPv4 address; available: {_describe(table)}"
    )


# -- the socket ------------------------------------------------------------------------------


def open_multicast_socket(
    group: str,
    port: int,
    iface_addr: str,
    ttl: int = 1,
    loop: bool = True,
    rcvbuf: int = DEFAULT_RCVBUF,
) -> socket.socket:
    """A non-blocking UDP socket joined to ``group`` on the interface holding ``iface_addr``.

    Bound to the group address (so it sees only this group's traffic on ``port``; falls back
    to the wildcard address where binding to a group is not allowed), sending through the same
    interface with ``ttl`` and ``loop`` (``IP_MULTICAST_LOOP``: needed when several nodes share
    a host). Shareable by several sockets of one host (SO_REUSEADDR, SO_REUSEPORT).
    """
    try:
        g = ipaddress.IPv4Address(group)
    except ValueError:
        raise ValueError(f"multicast group {group!r} is not an IPv4 address") from None
    if not g.is_multicast:
        raise ValueError(f"multicast group {group} is not a multicast address (224.0.0.0/4)")
    try:
        ifa = ipaddress.IPv4Address(iface_addr)
    except ValueError:
        raise ValueError(f"interface address {iface_addr!r} is not an IPv4 address") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1..65535")
    if not 0 <= ttl <= 255:
        raise ValueError(f"multicast TTL {ttl} is out of range 0..255")

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.bind((str(g), port))
        except OSError:
            sock.bind(("", port))
        if _IP_MULTICAST_ALL is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, g.packed + ifa.packed)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot join multicast group {g} on interface {ifa}: {exc.strerror}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, ifa.packed)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loop else 0)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- the asyncio endpoint --------------------------------------------------------------------

DatagramCallback = Callable[[bytes, Address], None]


class MulticastEndpoint(asyncio.DatagramProtocol):
    """The cluster's multicast group as an asyncio datagram protocol.

    ``send`` never raises and never queues without bound: while the transport asks us to pause
    (its buffer is full), datagrams are dropped and counted - the protocol retransmits, and a
    LAN that cannot keep up is better served by loss than by a growing queue.
    """

    def __init__(self, group: str, port: int, on_datagram: DatagramCallback | None = None) -> None:
        self.group = group
        self.port = port
        self.on_datagram = on_datagram
        """Called with every received datagram; may be set after construction."""
        self.transport: asyncio.DatagramTransport | None = None
        self.sent = 0
        self.received = 0
        self.errors = 0
        """Socket errors (``error_received``, failed sends) and callback exceptions."""
        self.dropped = 0
        """Datagrams not sent: endpoint closed or transport paused (buffer full)."""
        self.last_error: BaseException | None = None
        self.ack_filter = False
        """Whether the kernel drops SECOND_ACKs for us now (:meth:`filter_second_acks`)."""
        self._paused = False
        self._closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        group: str,
        port: int,
        iface_addr: str,
        on_datagram: DatagramCallback | None = None,
        *,
        ttl: int = 1,
        loop_back: bool = True,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> MulticastEndpoint:
        """Open a socket with :func:`open_multicast_socket` and run an endpoint on it."""
        sock = open_multicast_socket(
            group, port, iface_addr, ttl=ttl, loop=loop_back, rcvbuf=rcvbuf
        )
        try:
            return await cls.on_socket(sock, group, port, on_datagram)
        except BaseException:
            sock.close()
            raise

    @classmethod
    async def on_socket(
        cls,
        sock: socket.socket,
        group: str,
        port: int,
        on_datagram: DatagramCallback | None = None,
    ) -> MulticastEndpoint:
        """Run an endpoint on an already configured socket (the endpoint takes ownership)."""
        loop = asyncio.get_running_loop()
        endpoint = cls(group, port, on_datagram)
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    # -- asyncio.DatagramProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's selector datagram transport does not subclass DatagramTransport in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received += 1
        cb = self.on_datagram
        if cb is None:
            return
        try:
            cb(data, addr)
        except Exception as exc:  # one datagram must never take the receive path down
            self.errors += 1
            self.last_error = exc
            log.exception("datagram callback failed on %d bytes from %s", len(data), addr)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = exc
        log.debug("multicast socket error: %s", exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if exc is not None:
            self.last_error = exc
            log.warning("multicast endpoint lost: %s", exc)
        if not self._closed.done():
            self._closed.set_result(None)

    # -- API --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Multicast ``data`` to the group (never raises; failures are counted)."""
        t = self.transport
        if t is None or t.is_closing() or self._paused:
            self.dropped += 1
            return
        try:
            t.sendto(data, (self.group, self.port))
        except OSError as exc:
            self.errors += 1
            self.last_error = exc
            return
        self.sent += 1

    def filter_second_acks(self, on: bool) -> bool:
        """Attach (or detach) the kernel filter that drops every SECOND_ACK (``ack_filter``);
        False if this socket cannot have it (then the engine's own drop remains)."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None:
            return False
        try:
            if on:
                ack_filter.attach(sock)
            else:
                ack_filter.detach(sock)
        except (OSError, AttributeError) as exc:
            log.info("no kernel filter for other backups' confirmations: %s", exc)
            return False
        self.ack_filter = on
        return True

    @property
    def closed(self) -> bool:
        return self._closed.done()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "dropped": self.dropped,
        }


# -- the engine driver -----------------------------------------------------------------------

_MAX_ROUNDS = 64
"""Output/event rounds per input before yielding to the loop (a host that keeps feeding the
engine from its event callback must not starve the socket)."""

_MIN_TIMER_GAP = 0.0005
"""After ``handle_timer`` the engine's deadline must lie in the future; if it does not (an
engine bug), the timer is armed this far ahead instead of spinning."""


class EngineDriver:
    """Runs a sans-I/O :class:`NodeEngine` on an asyncio event loop.

    * ``receive(data, addr)`` (the endpoint's callback) feeds a datagram with
      ``now = loop.time()``; the engine counts and drops malformed ones.
    * After every input (datagram, timer, :meth:`poke`) the driver sends
      ``datagrams_to_send(now)`` with ``send`` and drains ``next_event()`` into ``on_event``,
      until both are empty (the host may call into the engine from ``on_event``).
    * Exactly one ``loop.call_at`` handle is armed at ``engine.get_timer()``; it is moved only
      when the deadline changes.

    If the engine raises on a datagram (a bug: malformed input is counted, not raised), the
    datagram is dropped, logged and counted in :attr:`receive_errors`. If it raises on its timer
    or output path, nothing would ever work again: the driver stops and records the exception in
    :attr:`failure`, :meth:`healthy` turns false, the watchdog stops pinging and systemd
    restarts the agent, rather than a half-dead node carrying on.
    """

    def __init__(
        self,
        engine: NodeEngine,
        send: Callable[[bytes], None],
        on_event: Callable[[Event], None] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        max_lag: float = 1.0,
    ) -> None:
        self.engine = engine
        self._send = send
        self.on_event = on_event
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.max_lag = max_lag
        """How late the armed timer may be before :meth:`healthy` reports a starved loop."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._running = False
        self._flushing = False
        self._again = False
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        """Called once if the engine fails and the driver stops (e.g. to exit the agent)."""
        self.filter_acks: Callable[[bool], bool] | None = None
        """Attaches or detaches the socket's SECOND_ACK filter (``MulticastEndpoint.
        filter_second_acks``) as ``engine.acks_filterable`` changes; dropped if it fails."""
        self._acks_filtered = False
        # counters
        self.wakeups = 0
        """Timer callbacks run (the idle cost of this node)."""
        self.rearms = 0
        """Times the timer was (re)scheduled because the deadline changed."""
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.events_out = 0
        self.receive_errors = 0
        """Datagrams on which the engine raised (an engine bug): logged and dropped."""
        self.callback_errors = 0
        """Exceptions raised by the host's ``on_event`` or ``send`` (logged, not fatal)."""
        self.max_timer_lag = 0.0
        """Largest delay seen between a deadline and its timer callback."""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        if self.failure is not None:
            raise RuntimeError("engine driver failed; it cannot be restarted") from self.failure
        self._running = True
        self._process(self.loop.time())

    def stop(self) -> None:
        self._running = False
        self._cancel_timer()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def acks_filtered(self) -> bool:
        """Whether the socket's kernel filter drops SECOND_ACKs for us now."""
        return self._acks_filtered

    @property
    def timer_deadline(self) -> float | None:
        """The loop time the single armed timer fires at (None when stopped)."""
        return self._timer_at

    def healthy(self) -> bool:
        """Running, the engine has not failed and its timer is not overdue by ``max_lag``."""
        if not self._running or self.failure is not None:
            return False
        return self._timer_at is None or self.loop.time() - self._timer_at <= self.max_lag

    # -- inputs -----------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Address = None) -> None:
        """A datagram from the group (the endpoint's ``on_datagram`` callback)."""
        if not self._running:
            return
        self.datagrams_in += 1
        now = self.loop.time()
        try:
            if not self.engine.receive_datagram(data, now):
                return  # nothing became due (our own, looped back, or a spent confirmation)
        except Exception:
            # The engine's filter counts malformed and unauthenticated datagrams itself; an
            # exception here is an engine bug on an authenticated datagram. Drop it and go on:
            # a retransmitted poison datagram must not take down every node in turn.
            self.receive_errors += 1
            log.exception("engine raised on a %d-byte datagram from %s; dropped", len(data), addr)
        self._process(now)

    def poke(self) -> None:
        """The host called into the engine (submit, fence_result, ...): send, drain, re-arm."""
        if not self._running:
            return
        if self._flushing:  # called from on_event: the running flush picks it up
            self._again = True
            return
        self._process(self.loop.time())

    def _on_timer(self) -> None:
        deadline = self._timer_at
        self._timer = None
        self._timer_at = None
        if not self._running:
            return
        self.wakeups += 1
        t = self.loop.time()
        if deadline is not None:
            self.max_timer_lag = max(self.max_timer_lag, t - deadline)
            # call_at may fire up to the clock resolution early: never hand the engine a time
            # before its own deadline, or it would re-arm the same deadline and spin once.
            t = max(t, deadline)
        try:
            self.engine.handle_timer(t)
        except Exception as exc:
            self._fail(exc, "handle_timer")
            return
        self._process(t, after_timer=True)

    # -- the output path --------------------------------------------------------------------

    def _sync_ack_filter(self) -> None:
        """Filter other backups' confirmations in the kernel exactly while the engine may.

        Checked before every flush round, so the filter is off before our gateway's request
        or our first message as a candidate leaves (the confirmations they lead to come
        after), and after the last, so it goes on as soon as nothing here needs them."""
        if self.filter_acks is None:
            return
        want = self.engine.acks_filterable
        if want is self._acks_filtered:
            return
        if self.filter_acks(want):
            self._acks_filtered = want
        else:  # this socket cannot have it: the engine's own drop remains
            self.filter_acks = None
            self._acks_filtered = False

    def _process(self, now: float, after_timer: bool = False) -> None:
        start = now
        self._flushing = True
        try:
            for _ in range(_MAX_ROUNDS):
                self._again = False
                self._sync_ack_filter()
                try:
                    out = self.engine.datagrams_to_send(now)
                except Exception as exc:
                    self._fail(exc, "datagrams_to_send")
                    return
                for d in out:
                    self.datagrams_out += 1
                    try:
                        self._send(d)
                    except Exception:
                        self.callback_errors += 1
                        log.exception("send of a %d-byte datagram failed", len(d))
                # Sending cannot feed the engine (our own datagrams come back later, as
                # input), so only the events, whose handlers may submit or send, can make more
                # output due this instant.
                progressed = False
                while (ev := self.engine.next_event()) is not None:
                    progressed = True
                    self.events_out += 1
                    if self.on_event is not None:
                        try:
                            self.on_event(ev)
                        except Exception:
                            self.callback_errors += 1
                            log.exception("host callback failed on %r", ev)
                    if not self._running:
                        return
                if not (progressed or self._again):
                    break
                now = max(now, self.loop.time())
            else:  # still producing: let the loop breathe, then continue
                self.loop.call_soon(self.poke)
        finally:
            self._flushing = False
        self._sync_ack_filter()
        self._arm(start, after_timer)

    def _arm(self, now: float, after_timer: bool) -> None:
        """Move the one timer to the engine's deadline; ``now`` is the input's time."""
        if not self._running:
            return
        try:
            deadline = self.engine.get_timer()
        except Exception as exc:
            self._fail(exc, "get_timer")
            return
        if after_timer and deadline <= now:
            log.warning("engine deadline %.6f not after its timer at %.6f", deadline, now)
            deadline = now + _MIN_TIMER_GAP
        if self._timer is not None:
            if self._timer_at == deadline:
                return
            self._timer.cancel()
        self.rearms += 1
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _fail(self, exc: BaseException, where: str) -> None:
        self.failure = exc
        log.critical("protocol engine raised in %s; driver stopped", where, exc_info=exc)
        self.stop()
        if self.on_failure is not None:
            try:
                self.on_failure(exc)
            except Exception:
                log.exception("on_failure callback failed")

    def stats(self) -> dict[str, object]:
        return {
            "wakeups": self.wakeups,
            "rearms": self.rearms,
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "events": self.events_out,
            "receive_errors": self.receive_errors,
            "callback_errors": self.callback_errors,
            "max_timer_lag": self.max_timer_lag,
            "acks_filtered": self._acks_filtered,
            "failure": repr(self.failure) if self.failure is not None else None,
        }
