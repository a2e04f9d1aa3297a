"""The determinizer: record non-deterministic results on the primary, replay them on backups.

This is LLFT's generic VDF algorithm as a pure state machine. It never reads a clock or an
entropy source itself: on the primary (:attr:`Mode.RECORD`) the host injects the real sources
(wall-clock milliseconds, ``os.urandom``) as callables; on a backup (:attr:`Mode.REPLAY`) they are
unused and every answer comes from the records the primary shipped with the operation.

One operation (one entry of the group's ordered log) is bracketed by :meth:`Determinizer.begin`
and :meth:`Determinizer.end`::

    # primary                                   # backup (semi-active)
    det.begin(op_id)                            det.begin(op_id, records)
    result = service.apply(request)             result = service.apply(request)
    records = det.end()  # ship with the op     det.end()  # checks every record was used

Inside an operation the application asks for time (:meth:`~Determinizer.now_ms`), randomness
(:meth:`~Determinizer.random_below`, :meth:`~Determinizer.random_bytes`) and, for multithreaded
applications, lock ordering (:meth:`~Determinizer.acquire_order` on the primary,
:meth:`~Determinizer.may_acquire` / :meth:`~Determinizer.acquired` on a backup). Each answer is a
:class:`~appliance.protocols.vdf.records.VdfRecord` keyed by (thread id, op id, per-thread
counter). A backup that asks for something the primary did not record (another kind, another
bound, another mutex, more events than were recorded, or fewer by the end of the operation) has
diverged, and :class:`DivergenceError` says exactly where.

The determinizer is not thread-safe: :mod:`appliance.vdf_runtime` wraps it for real threads,
serialising every call under one guard and blocking threads until their turn at a mutex.

Replication styles: in **semi-active** replication every backup executes every operation in the
primary's order, replaying these records, so its state (and its suppressed outputs) are the
primary's. In **semi-passive** replication backups do not execute; they apply the state updates
the primary ships, so they need no records and the engine need not ship them (the primary still
executes with a RECORD determinizer, which costs little and keeps one code path). A backup that
becomes primary switches with :meth:`Determinizer.promote`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from appliance.protocols.vdf.records import Kind, VdfRecord, decode_records, encode_records
from appliance.protocols.wire.errors import WireError
from appliance.protocols.wire.fields import Reader, Writer, check_uint

__all__ = ["MAX_RANDOM_BOUND", "Determinizer", "DivergenceError", "Mode"]

MAX_RANDOM_BOUND = 1 << 64
"""Largest ``n`` accepted by :meth:`Determinizer.random_below` (results fit in a u64)."""

_TAG_BELOW = 1  # RANDOM value: tag, u64 (n - 1), u64 result
_TAG_BYTES = 2  # RANDOM value: tag, raw bytes
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


class Mode(enum.Enum):
    RECORD = "record"
    """Primary: read the real sources and record every answer."""
    REPLAY = "replay"
    """Backup: answer from the primary's records, in the primary's order."""


class DivergenceError(RuntimeError):
    """A replica asked for something the primary's records do not contain.

    The replica's execution no longer follows the primary's; it must not keep serving as a
    replica of it (the host drops it and rejoins through state transfer). The attributes locate
    the mismatch; any of them may be ``None`` when it does not apply.
    """

    def __init__(
        self,
        message: str,
        *,
        op_id: int | None = None,
        thread_id: int | None = None,
        counter: int | None = None,
        kind: Kind | None = None,
    ) -> None:
        where = []
        if op_id is not None:
            where.append(f"op {op_id}")
        if thread_id is not None:
            where.append(f"thread {thread_id}")
        if counter is not None:
            where.append(f"counter {counter}")
        if kind is not None:
            where.append(f"kind {kind.name}")
        prefix = f"VDF divergence at {', '.join(where)}: " if where else "VDF divergence: "
        super().__init__(prefix + message)
        self.op_id = op_id
        self.thread_id = thread_id
        self.counter = counter
        self.kind = kind


def _describe(rec: VdfRecord) -> str:
    """A short human description of a recorded event, for divergence messages."""
    if rec.kind is Kind.LOCK and len(rec.value) == 8:
        return f"LOCK of mutex {int.from_bytes(rec.value, 'big')}"
    if rec.kind is Kind.TIME and len(rec.value) == 8:
        return f"TIME {int.from_bytes(rec.value, 'big', signed=True)} ms"
    return f"{rec.kind.name} ({len(rec.value)} bytes of metadata)"


def _check_thread(thread_id: int) -> int:
    return check_uint("thread_id", thread_id, 32)


def _check_mutex(mutex_id: int) -> int:
    return check_uint("mutex_id", mutex_id, 64)


class Determinizer:
    """Records (primary) or replays (backup) the non-deterministic events of each operation.

    It also satisfies the KV service's ``Determinism`` protocol (``now_ms()``,
    ``random_below(n)``, thread id defaulting to 0), so ``KVStore(det=determinizer)`` works for a
    single-threaded service.
    """

    __slots__ = (
        "_clock",
        "_counters",
        "_entropy",
        "_given",
        "_mode",
        "_op_id",
        "_per_mutex",
        "_per_thread",
        "_records",
    )

    def __init__(
        self,
        mode: Mode,
        clock: Callable[[], int] | None = None,
        entropy: Callable[[int], bytes] | None = None,
    ) -> None:
        if not isinstance(mode, Mode):
            raise ValueError(f"mode must be a Mode, not {mode!r}")
        if mode is Mode.RECORD and (clock is None or entropy is None):
            raise ValueError("RECORD mode needs the real clock and entropy sources")
        self._mode = mode
        self._clock = clock
        self._entropy = entropy
        self._op_id: int | None = None
        # Next counter per thread (RECORD: to assign; REPLAY: expected).
        self._counters: dict[int, int] = {}
        # RECORD: the events of the current operation, in global order.
        self._records: list[VdfRecord] = []
        # REPLAY: the primary's stream, each thread's pending events, and per mutex the threads
        # still to acquire it, in the primary's order.
        self._given = b""
        self._per_thread: dict[int, deque[VdfRecord]] = {}
        self._per_mutex: dict[int, deque[int]] = {}

    # ------------------------------------------------------------------ operation lifecycle

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def op_id(self) -> int | None:
        """The operation in progress, or ``None`` between operations."""
        return self._op_id

    def promote(self, clock: Callable[[], int], entropy: Callable[[int], bytes]) -> None:
        """Switch a backup's determinizer to RECORD (it became primary). Between operations only."""
        if self._op_id is not None:
            raise RuntimeError(f"cannot change mode during operation {self._op_id}")
        self._mode = Mode.RECORD
        self._clock = clock
        self._entropy = entropy

    def begin(self, op_id: int, records: bytes = b"") -> None:
        """Start operation ``op_id``; in REPLAY, ``records`` are the primary's for that op.

        Raises :class:`WireError` if ``records`` do not decode and :class:`DivergenceError` if
        they are not a well-formed stream for this operation (another op id, a thread whose
        counters are not 0, 1, 2, ...).
        """
        check_uint("op_id", op_id, 64)
        if self._op_id is not None:
            raise RuntimeError(f"operation {self._op_id} is still in progress")
        self._counters = {}
        if self._mode is Mode.RECORD:
            if records:
                raise ValueError("records are only given to begin() in REPLAY mode")
            self._records = []
            self._op_id = op_id
            return
        decoded = decode_records(records)  # WireError propagates: the stream is corrupt
        per_thread: dict[int, deque[VdfRecord]] = {}
        per_mutex: dict[int, deque[int]] = {}
        for rec in decoded:
            if rec.op_id != op_id:
                raise DivergenceError(
                    f"record belongs to op {rec.op_id}",
                    op_id=op_id,
                    thread_id=rec.thread_id,
                    counter=rec.counter,
                    kind=rec.kind,
                )
            queue = per_thread.setdefault(rec.thread_id, deque())
            if rec.counter != len(queue):
                raise DivergenceError(
                    f"recorded counter out of sequence (expected {len(queue)})",
                    op_id=op_id,
                    thread_id=rec.thread_id,
                    counter=rec.counter,
                    kind=rec.kind,
                )
            queue.append(rec)
            if rec.kind is Kind.LOCK:
                if len(rec.value) != 8:
                    raise DivergenceError(
                        "LOCK record does not hold a u64 mutex id",
                        op_id=op_id,
                        thread_id=rec.thread_id,
                        counter=rec.counter,
                        kind=rec.kind,
                    )
                mutex_id = int.from_bytes(rec.value, "big")
                per_mutex.setdefault(mutex_id, deque()).append(rec.thread_id)
        self._given = encode_records(decoded)
        self._per_thread = per_thread
        self._per_mutex = per_mutex
        self._op_id = op_id

    def end(self) -> bytes:
        """Finish the operation and return its encoded records.

        RECORD: the records to ship to the backups with the operation (``b""`` if none).
        REPLAY: the records that were replayed; raises :class:`DivergenceError` if some were
        never asked for (the operation is finished either way).
        """
        op_id = self._require_op()
        self._op_id = None
        if self._mode is Mode.RECORD:
            out = encode_records(self._records)
            self._records = []
            return out
        leftovers = [rec for queue in self._per_thread.values() for rec in queue]
        given = self._given
        self._per_thread = {}
        self._per_mutex = {}
        self._given = b""
        if leftovers:
            first = min(leftovers, key=lambda rec: (rec.thread_id, rec.counter))
            raise DivergenceError(
                f"operation ended with {len(leftovers)} recorded events never replayed, "
                f"first: {_describe(first)}",
                op_id=op_id,
                thread_id=first.thread_id,
                counter=first.counter,
                kind=first.kind,
            )
        return given

    def abandon(self) -> None:
        """Drop the operation in progress without checks (after a divergence, before resync)."""
        self._op_id = None
        self._records = []
        self._per_thread = {}
        self._per_mutex = {}
        self._given = b""
        self._counters = {}

    # ------------------------------------------------------------------ time and randomness

    def now_ms(self, thread_id: int = 0) -> int:
        """The wall clock in milliseconds: the primary's reading, on every replica."""
        _check_thread(thread_id)
        if self._mode is Mode.RECORD:
            self._require_op()
            assert self._clock is not None
            now = self._clock()
            if isinstance(now, bool) or not isinstance(now, int) or not _I64_MIN <= now <= _I64_MAX:
                raise ValueError(f"clock returned {now!r}, not a signed 64-bit int of ms")
            self._record(thread_id, Kind.TIME, now.to_bytes(8, "big", signed=True))
            return now
        rec = self._next(thread_id, Kind.TIME)
        if len(rec.value) != 8:
            raise self._mismatch(rec, "TIME record does not hold a 64-bit clock reading")
        return int.from_bytes(rec.value, "big", signed=True)

    def random_below(self, n: int, thread_id: int = 0) -> int:
        """A uniformly random int in ``[0, n)``: the primary's draw, on every replica."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RANDOM_BOUND:
            raise ValueError(f"random_below needs 1 <= n <= 2**64, got {n!r}")
        _check_thread(thread_id)
        if self._mode is Mode.RECORD:
            self._require_op()
            value = self._draw_below(n)
            meta = Writer().u8(_TAG_BELOW).u64(n - 1).u64(value).getvalue()
            self._record(thread_id, Kind.RANDOM, meta)
            return value
        rec = self._next(thread_id, Kind.RANDOM)
        try:
            r = Reader(rec.value)
            tag = r.u8()
            if tag != _TAG_BELOW:
                raise self._mismatch(rec, f"primary drew random bytes, replica asks below {n}")
            bound = r.u64() + 1
            value = r.u64()
            r.finish()
        except WireError as exc:
            raise self._mismatch(rec, f"RANDOM record is malformed ({exc})") from None
        if bound != n:
            raise self._mismatch(rec, f"primary drew below {bound}, replica asks below {n}")
        if value >= n:
            raise self._mismatch(rec, f"recorded draw {value} is not below {n}")
        return value

    def random_bytes(self, n: int, thread_id: int = 0) -> bytes:
        """``n`` random bytes: the primary's, on every replica."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"random_bytes needs n >= 0, got {n!r}")
        _check_thread(thread_id)
        if self._mode is Mode.RECORD:
            self._require_op()
            raw = self._read_entropy(n)
            self._record(thread_id, Kind.RANDOM, bytes([_TAG_BYTES]) + raw)
            return raw
        rec = self._next(thread_id, Kind.RANDOM)
        if not rec.value or rec.value[0] != _TAG_BYTES:
            raise self._mismatch(rec, f"primary drew a bounded int, replica asks for {n} bytes")
        raw = rec.value[1:]
        if len(raw) != n:
            raise self._mismatch(rec, f"primary drew {len(raw)} bytes, replica asks for {n}")
        return raw

    # ------------------------------------------------------------------ inputs

    def select_input(self, ready: bytes | None = None, thread_id: int = 0) -> bytes:
        """Which of several ready inputs this thread consumes next; returns its id.

        For an application that reads several inputs within one operation. RECORD: ``ready`` is
        the id of the input that actually arrived first; it is recorded and returned. REPLAY:
        ``ready`` is ignored and the id the primary consumed is returned - the replica must
        consume that input (it has it, or will: inputs are delivered reliably).
        """
        _check_thread(thread_id)
        if self._mode is Mode.RECORD:
            self._require_op()
            if not isinstance(ready, bytes):
                raise ValueError("RECORD mode needs the id of the input that is ready")
            self._record(thread_id, Kind.INPUT, ready)
            return ready
        return self._next(thread_id, Kind.INPUT).value

    # ------------------------------------------------------------------ lock ordering

    def acquire_order(self, mutex_id: int, thread_id: int) -> None:
        """RECORD: ``thread_id`` has just acquired ``mutex_id`` (call with the mutex held)."""
        _check_mutex(mutex_id)
        _check_thread(thread_id)
        if self._mode is not Mode.RECORD:
            raise RuntimeError("acquire_order() is for RECORD mode; replay uses may_acquire()")
        self._require_op()
        self._record(thread_id, Kind.LOCK, mutex_id.to_bytes(8, "big"))

    def may_acquire(self, mutex_id: int, thread_id: int) -> bool:
        """REPLAY: true iff the next recorded acquisition of ``mutex_id`` is by ``thread_id``.

        False means another thread must take the mutex first: wait and ask again. Ordering is per
        mutex, so threads that never contend for the same mutex never wait for each other.
        Raises :class:`DivergenceError` when the answer could never become true: this thread's
        next recorded event is not an acquisition of this mutex.
        """
        _check_mutex(mutex_id)
        _check_thread(thread_id)
        if self._mode is not Mode.REPLAY:
            raise RuntimeError("may_acquire() is for REPLAY mode; record uses acquire_order()")
        op_id = self._require_op()
        rec = self._peek(thread_id, Kind.LOCK)
        if rec.value != mutex_id.to_bytes(8, "big"):
            raise self._mismatch(
                rec, f"replica acquires mutex {mutex_id}, primary {_describe(rec)}"
            )
        queue = self._per_mutex.get(mutex_id)
        if not queue:  # cannot happen for a stream accepted by begin(); be loud if it does
            raise DivergenceError(
                f"no recorded acquisition of mutex {mutex_id} left",
                op_id=op_id,
                thread_id=thread_id,
                kind=Kind.LOCK,
            )
        return queue[0] == thread_id

    def acquired(self, mutex_id: int, thread_id: int) -> None:
        """REPLAY: ``thread_id`` now holds ``mutex_id``; the next thread in order may go."""
        if not self.may_acquire(mutex_id, thread_id):
            queue = self._per_mutex[mutex_id]
            raise DivergenceError(
                f"mutex {mutex_id} acquired out of order: thread {queue[0]} was next",
                op_id=self._op_id,
                thread_id=thread_id,
                counter=self._counters.get(thread_id, 0),
                kind=Kind.LOCK,
            )
        self._per_mutex[mutex_id].popleft()
        self._next(thread_id, Kind.LOCK)

    # ------------------------------------------------------------------ internals

    def _require_op(self) -> int:
        if self._op_id is None:
            raise RuntimeError("no VDF operation in progress: call begin(op_id) first")
        return self._op_id

    def _record(self, thread_id: int, kind: Kind, value: bytes) -> None:
        op_id = self._require_op()
        counter = self._counters.get(thread_id, 0)
        self._records.append(VdfRecord(thread_id, op_id, counter, kind, value))
        self._counters[thread_id] = counter + 1

    def _peek(self, thread_id: int, kind: Kind) -> VdfRecord:
        """The thread's next recorded event, checked to be of ``kind``."""
        op_id = self._require_op()
        counter = self._counters.get(thread_id, 0)
        queue = self._per_thread.get(thread_id)
        if not queue:
            raise DivergenceError(
                f"replica asks for {kind.name} but the primary recorded no more events "
                "for this thread",
                op_id=op_id,
                thread_id=thread_id,
                counter=counter,
                kind=kind,
            )
        rec = queue[0]
        if rec.kind is not kind:
            raise self._mismatch(
                rec, f"replica asks for {kind.name}, primary recorded {_describe(rec)}"
            )
        return rec

    def _next(self, thread_id: int, kind: Kind) -> VdfRecord:
        """Consume the thread's next recorded event, checked to be of ``kind``."""
        rec = self._peek(thread_id, kind)
        self._per_thread[thread_id].popleft()
        self._counters[thread_id] = rec.counter + 1
        return rec

    def _mismatch(self, rec: VdfRecord, message: str) -> DivergenceError:
        return DivergenceError(
            message,
            op_id=rec.op_id,
            thread_id=rec.thread_id,
            counter=rec.counter,
            kind=rec.kind,
        )

    def _read_entropy(self, n: int) -> bytes:
        assert self._entropy is not None
        raw = self._entropy(n)
        if not isinstance(raw, bytes) or len(raw) != n:
            raise ValueError(f"entropy source returned {raw!r} for a request of {n} bytes")
        return raw

    def _draw_below(self, n: int) -> int:
        """Uniform in ``[0, n)`` by rejection sampling (fewer than 2 draws on average)."""
        bits = (n - 1).bit_length()
        if bits == 0:
            return 0
        mask = (1 << bits) - 1
        nbytes = (bits + 7) // 8
        while True:
            value = int.from_bytes(self._read_entropy(nbytes), "big") & mask
            if value < n:
                return value
