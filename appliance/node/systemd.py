"""systemd integration: readiness, status, stopping and the service watchdog (``sd_notify``).

The agent runs as ``Type=notify`` with ``WatchdogSec=``. It sends ``READY=1`` once it has joined
its group, ``STATUS=`` on every role or view change, ``STOPPING=1`` on a graceful shutdown and
``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, from the event loop itself (a side thread would keep
pinging while the loop is hung, which defeats the watchdog) and only while the agent reports
itself healthy.

sdnotify swallows every error unless ``debug=True``, does not read ``WATCHDOG_USEC``, uses a
blocking socket and encodes messages as latin-1, so this module uses it with ``debug=True``,
turns its socket non-blocking (a full notify socket must never stall the event loop), hands it
UTF-8 and computes the ping interval itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

import sdnotify

__all__ = ["SystemdNotifier", "WatchdogPinger", "watchdog_interval"]

log = logging.getLogger(__name__)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, or None if not asked.

    None when ``WATCHDOG_USEC`` is absent, not a positive integer, or when ``WATCHDOG_PID`` is
    set to another process (the watchdog is meant for that process, e.g. our parent).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if usec_text is None or not usec_text.strip():
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer number of microseconds", usec_text)
        return None
    if usec <= 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not positive", usec_text)
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text is not None and pid_text.strip():
        try:
            pid = int(pid_text)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 2 / 1_000_000


class SystemdNotifier:
    """Sends ``sd_notify`` messages to ``$NOTIFY_SOCKET``; a no-op when it is not set.

    Constructing it with ``$NOTIFY_SOCKET`` set but unreachable raises :class:`OSError` (under
    systemd a silent failure would only show up as a start timeout). Later send failures are
    logged and counted in :attr:`errors`, never raised: a notification problem must not take
    the node down.
    """

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        self.sent = 0
        self.errors = 0
        self.last_error: OSError | None = None
        self._failing = False
        self._sd: sdnotify.SystemdNotifier | None = None
        if self.address is None:
            return
        try:
            self._sd = sdnotify.SystemdNotifier(debug=True)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot connect to NOTIFY_SOCKET={self.address}: {exc.strerror}"
            ) from exc
        sock: socket.socket = self._sd.socket
        sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that asked for notifications."""
        return self._sd is not None

    def notify(self, state: str) -> bool:
        """Send one raw notification (``KEY=value`` lines); True if it was handed to systemd."""
        if self._sd is None:
            return False
        # sdnotify encodes with latin-1 (so "·" would reach systemd as invalid UTF-8 and "→"
        # would raise): hand it the UTF-8 bytes spelled as latin-1 code points instead.
        wire = state.encode("utf-8", "replace").decode("latin-1")
        try:
            self._sd.notify(wire)
        except OSError as exc:
            self.errors += 1
            self.last_error = exc
            # one warning per run of failures (a ping every few seconds must not flood logs)
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "sd_notify %r to %s failed: %s", state, self.address, exc)
            self._failing = True
            return False
        self._failing = False
        self.sent += 1
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line (newlines would start new assignments), as ``systemctl
        status`` shows it."""
        line = " ".join(text.splitlines()).strip()
        return self.notify(f"STATUS={line}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sd is not None and self._sd.socket is not None:
            self._sd.socket.close()
        self._sd = None


class WatchdogPinger:
    """Pings the systemd watchdog from the event loop, while ``healthy()`` says so.

    A chain of ``loop.call_at`` callbacks, never a thread: if the loop hangs, pings stop and
    systemd restarts the agent; if ``healthy()`` is false (or raises), the ping is skipped with
    the same effect. Pings follow a fixed cadence from the first one; after a stall (a late
    callback) the cadence restarts from now rather than bursting to catch up.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        interval: float,
        healthy: Callable[[], bool] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        self.notifier = notifier
        self.interval = interval
        self.healthy: Callable[[], bool] = healthy if healthy is not None else (lambda: True)
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._withholding = False
        self.pings = 0
        self.skipped = 0
        """Pings withheld because the agent was unhealthy."""

    @classmethod
    def from_environment(
        cls,
        notifier: SystemdNotifier,
        healthy: Callable[[], bool] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> WatchdogPinger | None:
        """A pinger at half of ``WATCHDOG_USEC``, or None when systemd asked for no watchdog."""
        interval = watchdog_interval(environ)
        if interval is None or not notifier.enabled:
            return None
        return cls(notifier, interval, healthy)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Ping now (if healthy), then every ``interval`` seconds."""
        if self._handle is not None:
            return
        self._next = self.loop.time()
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        try:
            ok = bool(self.healthy())
        except Exception:
            log.exception("watchdog health check raised; withholding the ping")
            ok = False
        if ok:
            if self._withholding:
                log.warning("agent healthy again: resuming WATCHDOG=1")
                self._withholding = False
            self.notifier.watchdog()
            self.pings += 1
        else:
            if not self._withholding:
                log.warning("agent unhealthy: withholding WATCHDOG=1 so systemd can restart it")
                self._withholding = True
            self.skipped += 1
        self._next += self.interval
        if self._next <= now:  # we were stalled: do not burst, restart the cadence
            self._next = now + self.interval
        self._handle = self.loop.call_at(self._next, self._tick)
