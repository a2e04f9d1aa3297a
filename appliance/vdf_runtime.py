"""The VDF's threaded runtime: deterministic locks, time and randomness for real threads.

:class:`~appliance.protocols.vdf.Determinizer` is a pure, single-threaded state machine. This
module applies it to a real multithreaded application:

* every determinizer call happens under one internal guard, with the calling thread's stable
  *logical* id (assigned in creation order - identical on every replica - never the OS ident);
* :class:`DeterministicLock` is a mutex whose acquisition order is recorded on the primary and
  enforced on the backups. In RECORD mode it takes a real :class:`threading.Lock` (the OS decides
  who wins) and then records the acquisition. In REPLAY mode a thread waits on a
  :class:`threading.Condition` - no busy loop - until the primary's records say it is next for
  *this* mutex, then takes the real lock. Ordering is per mutex: threads that never contend for the
  same mutex are never serialised against each other and run concurrently, as LLFT requires;
* :func:`interpose` installs all of this on an unmodified module.

Lifecycle on each replica (the replication engine drives it, one log entry at a time)::

    runtime.begin(op_id)            # backup: runtime.begin(op_id, records)
    ... application threads run, created with runtime.thread(fn) ...
    records = runtime.end()         # primary: ship records with the operation

A thread that asks for an event the primary never recorded, or waits longer than
``replay_timeout`` for its turn at a mutex, gets :class:`~appliance.protocols.vdf.DivergenceError`.

Supported lock use: blocking ``acquire()``/``release()`` and ``with lock:``. A non-blocking or
timed acquire would make the *outcome* of the attempt non-deterministic as well and is refused,
as is using a :class:`DeterministicLock` under :class:`threading.Condition` (which probes its lock
without blocking).
"""

from __future__ import annotations

import random as _random_module
import threading
import time as _time_module
import weakref
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from contextlib import contextmanager
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from appliance.protocols.vdf import Determinizer, DivergenceError, Kind, Mode

__all__ = [
    "AUTO_MUTEX_BASE",
    "DeterministicLock",
    "DeterministicRandom",
    "VdfRuntime",
    "interpose",
]

AUTO_MUTEX_BASE = 1 << 32
"""First mutex id handed out by :meth:`VdfRuntime.new_lock` (explicit ids stay below it)."""

MAIN_THREAD_ID = 0
"""Logical id of the thread that created the runtime; created threads count from 1."""

_T = TypeVar("_T")


class DeterministicLock:
    """A mutex whose acquisition order is the primary's on every replica.

    Obtain one from :meth:`VdfRuntime.lock` (explicit id) or :meth:`VdfRuntime.new_lock`
    (sequential ids in creation order). Not reentrant, like :class:`threading.Lock`.
    """

    __slots__ = ("_cond", "_mutex_id", "_real", "_runtime")

    def __init__(self, runtime: VdfRuntime, mutex_id: int, cond: threading.Condition) -> None:
        self._runtime = runtime
        self._mutex_id = mutex_id
        self._real = threading.Lock()
        self._cond = cond  # shares the runtime's guard; notified when this mutex's turn moves

    @property
    def mutex_id(self) -> int:
        return self._mutex_id

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking or timeout != -1:
            raise ValueError(
                "DeterministicLock supports only a blocking acquire without timeout: the outcome "
                "of a try-lock would itself be non-deterministic"
            )
        rt = self._runtime
        thread_id = rt.current_thread_id()
        if rt.mode is Mode.RECORD:
            self._real.acquire()
            try:
                with rt._guard:
                    rt._det.acquire_order(self._mutex_id, thread_id)
            except BaseException:
                self._real.release()
                raise
            return True
        deadline = _time_module.monotonic() + rt.replay_timeout
        with self._cond:
            while not rt._det.may_acquire(self._mutex_id, thread_id):
                remaining = deadline - _time_module.monotonic()
                if remaining <= 0:
                    raise self._timed_out(thread_id, "its turn")
                self._cond.wait(remaining)
        # This thread is next for the mutex and stays next until acquired() below, so the only
        # thread that can hold the real lock now is the previous owner, about to release it.
        remaining = max(deadline - _time_module.monotonic(), 0.0)
        if not self._real.acquire(timeout=remaining):
            raise self._timed_out(thread_id, "the previous owner to release it")
        try:
            with self._cond:
                rt._det.acquired(self._mutex_id, thread_id)
                self._cond.notify_all()
        except BaseException:
            self._real.release()
            raise
        return True

    def release(self) -> None:
        self._real.release()

    def locked(self) -> bool:
        return self._real.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<DeterministicLock mutex={self._mutex_id} {state}>"

    def _timed_out(self, thread_id: int, waiting_for: str) -> DivergenceError:
        return DivergenceError(
            f"thread waited {self._runtime.replay_timeout:g} s on mutex {self._mutex_id} for "
            f"{waiting_for}; the replica no longer follows the primary's lock order",
            op_id=self._runtime._det.op_id,
            thread_id=thread_id,
            kind=Kind.LOCK,
        )


class VdfRuntime:
    """A :class:`Determinizer` made safe and useful for real threads.

    It also satisfies the KV service's ``Determinism`` protocol (``now_ms()``,
    ``random_below(n)``), answering for the calling thread.
    """

    def __init__(self, determinizer: Determinizer, *, replay_timeout: float = 5.0) -> None:
        if replay_timeout <= 0:
            raise ValueError("replay_timeout must be positive")
        self._det = determinizer
        self.replay_timeout = replay_timeout
        self._guard = threading.Lock()
        self._locks: dict[int, DeterministicLock] = {}
        self._thread_ids: weakref.WeakKeyDictionary[threading.Thread, int] = (
            weakref.WeakKeyDictionary()
        )
        self._next_thread_id = MAIN_THREAD_ID + 1
        self._next_auto_mutex = AUTO_MUTEX_BASE
        self._thread_ids[threading.current_thread()] = MAIN_THREAD_ID

    # ------------------------------------------------------------------ operations

    @property
    def determinizer(self) -> Determinizer:
        return self._det

    @property
    def mode(self) -> Mode:
        return self._det.mode

    def begin(self, op_id: int, records: bytes = b"") -> None:
        with self._guard:
            self._det.begin(op_id, records)

    def end(self) -> bytes:
        """Finish the operation (join its threads first) and return its records."""
        with self._guard:
            return self._det.end()

    def abandon(self) -> None:
        with self._guard:
            self._det.abandon()

    def promote(self, clock: Callable[[], int], entropy: Callable[[int], bytes]) -> None:
        with self._guard:
            self._det.promote(clock, entropy)

    # ------------------------------------------------------------------ threads

    def thread(
        self,
        fn: Callable[..., object],
        *args: object,
        name: str | None = None,
        daemon: bool | None = None,
        **kwargs: object,
    ) -> threading.Thread:
        """Create (not start) a thread running ``fn``, with the next logical thread id."""
        t = threading.Thread(target=fn, args=args, kwargs=kwargs, name=name, daemon=daemon)
        self.adopt(t)
        return t

    def adopt(self, thread: threading.Thread, logical_id: int | None = None) -> int:
        """Give ``thread`` a logical id: ``logical_id``, or the next in creation order."""
        with self._guard:
            if thread in self._thread_ids:
                raise ValueError(f"{thread!r} already has logical id {self._thread_ids[thread]}")
            if logical_id is None:
                logical_id = self._next_thread_id
                self._next_thread_id += 1
            else:
                self._check_free(logical_id)
            self._thread_ids[thread] = logical_id
            return logical_id

    def register_thread(self, logical_id: int | None = None) -> int:
        """Give the *calling* thread a logical id (for threads not made by :meth:`thread`)."""
        return self.adopt(threading.current_thread(), logical_id)

    def current_thread_id(self) -> int:
        """The calling thread's logical id; raises if it was never given one."""
        thread = threading.current_thread()
        try:
            return self._thread_ids[thread]
        except KeyError:
            raise RuntimeError(
                f"{thread.name} has no VDF thread id: create it with runtime.thread() or call "
                "runtime.register_thread() in it"
            ) from None

    def _check_free(self, logical_id: int) -> None:
        if isinstance(logical_id, bool) or not isinstance(logical_id, int) or logical_id < 0:
            raise ValueError(f"logical thread id must be a non-negative int, not {logical_id!r}")
        for other, other_id in self._thread_ids.items():
            if other_id == logical_id and (other.is_alive() or other.ident is None):
                raise ValueError(f"logical thread id {logical_id} is taken by {other.name}")

    # ------------------------------------------------------------------ locks

    def lock(self, mutex_id: int) -> DeterministicLock:
        """The deterministic lock with this id (the same object on every call)."""
        if isinstance(mutex_id, bool) or not isinstance(mutex_id, int) or not 0 <= mutex_id < 2**64:
            raise ValueError(f"mutex id must be a u64, not {mutex_id!r}")
        with self._guard:
            found = self._locks.get(mutex_id)
            if found is None:
                found = DeterministicLock(self, mutex_id, threading.Condition(self._guard))
                self._locks[mutex_id] = found
            return found

    def new_lock(self) -> DeterministicLock:
        """A fresh lock with the next sequential id from :data:`AUTO_MUTEX_BASE`."""
        with self._guard:
            mutex_id = self._next_auto_mutex
            self._next_auto_mutex += 1
        return self.lock(mutex_id)

    # ------------------------------------------------------------------ time, randomness, input

    def now_ms(self) -> int:
        thread_id = self.current_thread_id()
        with self._guard:
            return self._det.now_ms(thread_id)

    def random_below(self, n: int) -> int:
        thread_id = self.current_thread_id()
        with self._guard:
            return self._det.random_below(n, thread_id)

    def random_bytes(self, n: int) -> bytes:
        thread_id = self.current_thread_id()
        with self._guard:
            return self._det.random_bytes(n, thread_id)

    def select_input(self, ready: bytes | None = None) -> bytes:
        thread_id = self.current_thread_id()
        with self._guard:
            return self._det.select_input(ready, thread_id)


class DeterministicRandom:
    """The subset of the :mod:`random` module's API, backed by the runtime's recorded entropy.

    Every draw goes through :meth:`VdfRuntime.random_below` or :meth:`VdfRuntime.random_bytes`,
    so it is recorded on the primary and replayed on the backups. ``seed()`` is accepted and
    ignored (the primary's entropy is the seed). Functions not listed here raise
    :class:`AttributeError` rather than silently falling back to unrecorded randomness.
    """

    _FLOAT_BITS = 53

    def __init__(self, runtime: VdfRuntime) -> None:
        self._runtime = runtime

    def seed(self, a: object = None, version: int = 2) -> None:
        """Ignored: replicas share the primary's recorded entropy instead."""

    def random(self) -> float:
        """A float in ``[0.0, 1.0)`` with 53 random bits, like :func:`random.random`."""
        return self._runtime.random_below(1 << self._FLOAT_BITS) / (1 << self._FLOAT_BITS)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        if k <= 64:
            return self._runtime.random_below(1 << k)
        raw = self._runtime.random_bytes((k + 7) // 8)
        return int.from_bytes(raw, "big") >> (-k % 8)

    def randbytes(self, n: int) -> bytes:
        return self._runtime.random_bytes(n)

    def _below(self, n: int) -> int:
        if n <= 1 << 64:
            return self._runtime.random_below(n)
        bits = n.bit_length()  # larger than a u64: rejection-sample from recorded bytes
        while True:
            value = self.getrandbits(bits)
            if value < n:
                return value

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        if stop is None:
            start, stop = 0, start
        if step == 0:
            raise ValueError("zero step for randrange()")
        width = stop - start
        count = (width + step - 1) // step if step > 0 else (width + step + 1) // step
        if count <= 0:
            raise ValueError(f"empty range for randrange({start}, {stop}, {step})")
        return start + step * self._below(count)

    def randint(self, a: int, b: int) -> int:
        return self.randrange(a, b + 1)

    def choice(self, seq: Sequence[_T]) -> _T:
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        return seq[self._below(len(seq))]

    def shuffle(self, x: MutableSequence[Any]) -> None:
        for i in range(len(x) - 1, 0, -1):
            j = self._below(i + 1)
            x[i], x[j] = x[j], x[i]

    def sample(self, population: Sequence[_T], k: int) -> list[_T]:
        pool = list(population)
        if not 0 <= k <= len(pool):
            raise ValueError("sample larger than population or is negative")
        for i in range(k):
            j = i + self._below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"random.{name} is not determinized by the VDF runtime")


class _TimeProxy:
    """Stands in for the :mod:`time` module: clock reads are recorded, the rest is real."""

    def __init__(self, runtime: VdfRuntime) -> None:
        self._runtime = runtime

    def time(self) -> float:
        return self._runtime.now_ms() / 1000

    def time_ns(self) -> int:
        return self._runtime.now_ms() * 1_000_000

    # The primary's wall clock in ms is the only clock all replicas share, so the monotonic and
    # performance counters read it too (with ms resolution).
    monotonic = time
    perf_counter = time
    monotonic_ns = time_ns
    perf_counter_ns = time_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(_time_module, name)  # sleep, strftime, ...: no recorded result


class _ThreadingProxy:
    """Stands in for :mod:`threading`: ``Lock()`` and ``Thread`` are the runtime's."""

    def __init__(self, runtime: VdfRuntime) -> None:
        self._runtime = runtime

        class Thread(threading.Thread):
            """A :class:`threading.Thread` given the next logical VDF id when created."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                runtime.adopt(self)

        self.Thread = Thread

    def Lock(self) -> DeterministicLock:
        return self._runtime.new_lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)  # Event, current_thread, ...: not determinized


@contextmanager
def interpose(module: ModuleType, runtime: VdfRuntime) -> Iterator[None]:
    """Make an unmodified module deterministic for the duration of the block.

    This is LLFT's *library interpositioning* - which preloads a shared library that overrides
    the system calls an application makes - done at the Python module level: the module's global
    names are rebound, so code that calls ``time.time()``, ``random.random()`` or
    ``threading.Lock()`` gets the VDF's versions without a line changed.

    * ``time`` (``time``, ``time_ns``, ``monotonic`` and the ``perf_counter`` family) read the
      primary's recorded clock, in ms resolution; ``sleep`` and the rest stay real.
    * ``random`` becomes a :class:`DeterministicRandom` (``random``, ``uniform``, ``randint``,
      ``randrange``, ``choice``, ``shuffle``, ``sample``, ``getrandbits``, ``randbytes``).
    * ``threading.Lock()`` returns :class:`DeterministicLock` objects with sequential mutex ids in
      creation order, and ``threading.Thread`` gives each new thread the next logical id; the
      rest of :mod:`threading` stays real (``RLock``, ``Condition`` and friends are *not*
      determinized).

    Only names the module actually binds to those modules are replaced (``from time import
    time`` is out of reach, as it is for any module-level interposition), and every one is
    restored on exit, even on error. Not reentrant for the same module.
    """
    replacements: dict[str, object] = {
        "time": _TimeProxy(runtime),
        "random": DeterministicRandom(runtime),
        "threading": _ThreadingProxy(runtime),
    }
    real = {"time": _time_module, "random": _random_module, "threading": threading}
    namespace = vars(module)
    saved: dict[str, object] = {}
    for name, proxy in replacements.items():
        if namespace.get(name) is real[name]:
            saved[name] = namespace[name]
            namespace[name] = proxy
    try:
        yield
    finally:
        namespace.update(saved)
