"""A joiner's snapshot encoded and hashed in a forked child, off the primary's event loop.

Encoding 100,000 keys and hashing the 12 MB they make is about 100 ms of CPU. Done on the
primary's loop, even in 2 ms steps, every write during a join waited behind a step at each of
its loop passes (request, confirmations, reply): writes of 9-21 ms while the snapshot was
built. A child made by ``fork()`` sees the state exactly as it is at the fork (copy-on-write,
so capturing it costs the page tables, about a millisecond), encodes it at a lower CPU
priority and pipes the result back; the primary only reads the pipe, a megabyte at a time.
This is how Redis takes its snapshots (``BGSAVE``).

The child touches nothing but the state and the pipe: it does not log, run the event loop,
use the control channel's threads or flush inherited buffers, and leaves with ``os._exit``.
If the primary dies first, the child's next write fails (``EPIPE``) and it exits.

Pipe format: the state's total size (u64, big-endian) and the SHA-256 the offer carries
(32 bytes), then the state itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import gc
import logging
import os
import signal
import struct
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "CHILD_NICENESS",
    "ENV",
    "Encoder",
    "ForkedSnapshot",
    "Produce",
    "Result",
    "choose_encoder",
    "fork_available",
]

log = logging.getLogger(__name__)

CHILD_NICENESS = 10
"""How much lower the child's CPU priority is: on a busy node the agents serving writes come
first, and the snapshot takes longer instead."""

_HEADER = struct.Struct(">Q32s")
_READ = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

Produce = Callable[[], tuple[Sequence[bytes], bytes] | None]
"""Run in the child: the state in parts and the offer's digest (None: nothing to send)."""
Result = tuple[list[bytes], bytes] | str
"""What the parent gets: the state in parts and its digest, or why there is none."""


ENV = "APPLIANCE_SNAPSHOT_ENCODER"


class Encoder(enum.Enum):
    """Where a primary encodes a joiner's snapshot."""

    CHILD = "child"
    """In a forked child (the default where ``fork()`` exists)."""
    LOOP = "loop"
    """In bounded steps on the agent's event loop: no second process, no copy-on-write
    memory (a child's pages the primary writes meanwhile are copied: on a node short of
    memory under heavy writes, up to the state's size again), but writes during a join wait
    behind the steps."""


def fork_available() -> bool:
    return hasattr(os, "fork")


def choose_encoder(flag: str | None, environ: Mapping[str, str] | None = None) -> Encoder:
    """The encoder ``--snapshot-encoder`` (``flag``) or else ``$APPLIANCE_SNAPSHOT_ENCODER``
    names; a child by default, the loop where there is no ``fork()``."""
    env = os.environ if environ is None else environ
    text, source = (flag, "--snapshot-encoder") if flag is not None else (env.get(ENV), ENV)
    if not text:
        return Encoder.CHILD if fork_available() else Encoder.LOOP
    try:
        encoder = Encoder(text.strip().lower())
    except ValueError:
        names = ", ".join(e.value for e in Encoder)
        raise ValueError(f"{source}={text!r}: expected one of {names}") from None
    if encoder is Encoder.CHILD and not fork_available():
        raise ValueError(f"{source}=child: this platform has no fork(); use loop")
    return encoder


class ForkedSnapshot:
    """One child encoding one snapshot, and the parent's end of its pipe."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        produce: Produce,
        done: Callable[[Result], None],
    ) -> None:
        self._loop = loop
        self._done: Callable[[Result], None] | None = done
        self._buf = bytearray()
        self._size: int | None = None
        self._digest = b""
        self._parts: list[bytes] = []
        self._got = 0
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, _F_SETPIPE_SZ, _READ)  # fewer wake-ups; the default is 64 KiB
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child; its result is tested
            os.close(r)
            _child(w, produce)
        os.close(w)
        self._fd = r
        os.set_blocking(r, False)
        loop.add_reader(r, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _READ)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(f"reading the pipe: {exc}")
            return
        if not chunk:
            self._finish(self._incomplete())
            return
        if self._size is None:
            self._buf += chunk
            if len(self._buf) < _HEADER.size:
                return
            self._size, self._digest = _HEADER.unpack_from(self._buf)
            chunk = bytes(self._buf[_HEADER.size :])
            self._buf.clear()
        if chunk:
            self._parts.append(chunk)
            self._got += len(chunk)

    def _incomplete(self) -> str | None:
        if self._size is None:
            return "the child sent no snapshot"
        if self._got != self._size:
            return f"the child sent {self._got} of {self._size} bytes"
        return None

    def _finish(self, error: str | None) -> None:
        self._close_pipe()
        self._reap()
        done, self._done = self._done, None
        if done is None:
            return
        parts, self._parts = self._parts, []
        done((parts, self._digest) if error is None else error)

    def _close_pipe(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _reap(self) -> None:
        """Collect the child without blocking the loop (it exits right after its last write)."""
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            self._loop.call_later(0.01, self._reap)

    def cancel(self) -> None:
        """Stop the child (the admission ended, or the agent is stopping); ``done`` is not run."""
        self._done = None
        self._close_pipe()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()


def _child(fd: int, produce: Produce) -> None:  # pragma: no cover - runs in the child
    code = 1
    try:
        # A signal meant for the agent must not reach its loop through the inherited
        # wake-up descriptor; a collection would touch (and copy) every page of the state.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICENESS)
        result = produce()
        if result is not None:
            parts, digest = result
            _write_all(fd, _HEADER.pack(sum(map(len, parts)), digest))
            for part in parts:
                _write_all(fd, part)
            code = 0
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - runs in the child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
