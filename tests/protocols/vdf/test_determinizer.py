"""The pure determinizer: record on the primary, replay on a backup, fail loudly on divergence."""

from __future__ import annotations

import ast
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import appliance.protocols.vdf as vdf_pkg
from appliance.protocols.vdf import (
    Determinizer,
    DivergenceError,
    Kind,
    Mode,
    VdfRecord,
    decode_records,
    encode_records,
)
from appliance.protocols.wire.errors import WireError
from tests.protocols.test_purity import violations


def fake_clock(start: int = 1_700_000_000_000, step: int = 3) -> Callable[[], int]:
    ticks = itertools.count(start, step)
    return lambda: next(ticks)


def seeded_entropy(seed: int = 1) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def primary(seed: int = 1) -> Determinizer:
    return Determinizer(Mode.RECORD, fake_clock(), seeded_entropy(seed))


def backup() -> Determinizer:
    return Determinizer(Mode.REPLAY, None, None)


# ---------------------------------------------------------------------- round trips per kind


def test_time_round_trip() -> None:
    p = primary()
    p.begin(5)
    seen = [p.now_ms(), p.now_ms(thread_id=2), p.now_ms()]
    records = p.end()
    b = backup()
    b.begin(5, records)
    assert [b.now_ms(), b.now_ms(thread_id=2), b.now_ms()] == seen
    assert b.end() == records


def test_negative_clock_readings_survive() -> None:
    p = Determinizer(Mode.RECORD, lambda: -42, seeded_entropy())
    p.begin(1)
    assert p.now_ms() == -42
    b = backup()
    b.begin(1, p.end())
    assert b.now_ms() == -42


@pytest.mark.parametrize("n", [1, 2, 3, 6, 255, 256, 257, 10**9, 2**63, 2**64])
def test_random_below_round_trip(n: int) -> None:
    p = primary(n)
    p.begin(1)
    drawn = [p.random_below(n) for _ in range(20)]
    assert all(0 <= v < n for v in drawn)
    b = backup()
    b.begin(1, p.end())
    assert [b.random_below(n) for _ in range(20)] == drawn
    b.end()


def test_random_below_rejection_samples() -> None:
    # n=3 needs 2 bits: 0b11 is rejected, the next byte's 0b10 is accepted.
    chunks = iter([b"\x03", b"\xfe"])
    p = Determinizer(Mode.RECORD, fake_clock(), lambda k: next(chunks))
    p.begin(1)
    assert p.random_below(3) == 2


def test_random_below_is_roughly_uniform() -> None:
    p = primary(7)
    p.begin(1)
    counts = [0] * 6
    for _ in range(6000):
        counts[p.random_below(6)] += 1
    assert all(800 < c < 1200 for c in counts), counts


def test_random_bytes_round_trip() -> None:
    p = primary()
    p.begin(3)
    drawn = [p.random_bytes(16), p.random_bytes(0), p.random_bytes(5, thread_id=9)]
    b = backup()
    b.begin(3, p.end())
    assert [b.random_bytes(16), b.random_bytes(0), b.random_bytes(5, thread_id=9)] == drawn
    b.end()


def test_input_round_trip() -> None:
    p = primary()
    p.begin(4)
    assert p.select_input(b"conn-2") == b"conn-2"
    assert p.select_input(b"conn-1", thread_id=1) == b"conn-1"
    b = backup()
    b.begin(4, p.end())
    # The backup saw another arrival order; it consumes what the primary consumed.
    assert b.select_input(b"conn-1") == b"conn-2"
    assert b.select_input(None, thread_id=1) == b"conn-1"
    b.end()


def test_lock_order_round_trip_per_mutex() -> None:
    p = primary()
    p.begin(9)
    for mutex, thread in [(1, 2), (2, 1), (1, 1), (2, 3), (1, 3)]:
        p.acquire_order(mutex, thread)
    b = backup()
    b.begin(9, p.end())
    # Mutex 1 goes to threads 2, 1, 3 in that order; mutex 2 to 1, 3. Mutex 2 does not wait
    # for mutex 1: thread 1 may take mutex 2 before thread 2 has taken mutex 1.
    assert b.may_acquire(2, 1)
    assert not b.may_acquire(2, 3)
    b.acquired(2, 1)
    assert b.may_acquire(2, 3)  # thread 3 is next on mutex 2 although mutex 1 has not moved
    assert b.may_acquire(1, 2)
    assert not b.may_acquire(1, 1)
    b.acquired(1, 2)
    assert b.may_acquire(1, 1)
    b.acquired(1, 1)
    b.acquired(2, 3)
    assert b.may_acquire(1, 3)
    b.acquired(1, 3)
    b.end()


def test_records_carry_thread_op_and_per_thread_counter() -> None:
    p = primary()
    p.begin(77)
    p.now_ms(thread_id=1)
    p.acquire_order(5, 2)
    p.random_below(10, thread_id=1)
    p.select_input(b"x", thread_id=2)
    recs = decode_records(p.end())
    assert [(r.thread_id, r.op_id, r.counter, r.kind) for r in recs] == [
        (1, 77, 0, Kind.TIME),
        (2, 77, 0, Kind.LOCK),
        (1, 77, 1, Kind.RANDOM),
        (2, 77, 1, Kind.INPUT),
    ]
    assert recs[1].value == (5).to_bytes(8, "big")


def test_operation_without_events_ships_nothing() -> None:
    p = primary()
    p.begin(1)
    assert p.end() == b""
    b = backup()
    b.begin(1)
    assert b.end() == b""


def test_counters_restart_each_operation() -> None:
    p = primary()
    for op in (1, 2):
        p.begin(op)
        p.now_ms()
        p.now_ms()
        assert [r.counter for r in decode_records(p.end())] == [0, 1]


def test_implements_the_kv_determinism_protocol() -> None:
    @runtime_checkable
    class Determinism(Protocol):
        def now_ms(self) -> int: ...

        def random_below(self, n: int) -> int: ...

    p = primary()
    assert isinstance(p, Determinism)
    p.begin(1)
    t, r = p.now_ms(), p.random_below(100)
    b = backup()
    b.begin(1, p.end())
    assert (b.now_ms(), b.random_below(100)) == (t, r)


def test_promote_switches_a_backup_to_record() -> None:
    b = backup()
    b.begin(1)
    with pytest.raises(RuntimeError):
        b.promote(fake_clock(), seeded_entropy())
    b.end()
    b.promote(fake_clock(5), seeded_entropy())
    assert b.mode is Mode.RECORD
    b.begin(2)
    assert b.now_ms() == 5
    assert len(decode_records(b.end())) == 1


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["time", "below", "bytes", "input"]),
            st.integers(1, 300),
        ),
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_replay_is_independent_of_cross_thread_interleaving(
    program: list[tuple[int, str, int]], rng: random.Random
) -> None:
    """Non-lock events are matched per thread, so a backup whose threads interleave differently
    still gets every thread its own answers."""

    def call(det: Determinizer, thread: int, what: str, arg: int) -> object:
        if what == "time":
            return det.now_ms(thread)
        if what == "below":
            return det.random_below(arg, thread)
        if what == "bytes":
            return det.random_bytes(arg % 17, thread)
        return det.select_input(arg.to_bytes(2, "big"), thread)

    p = primary(len(program))
    p.begin(11)
    expected = [call(p, *step) for step in program]
    records = p.end()

    # Shuffle while keeping each thread's own order: a different global interleaving.
    order = list(range(len(program)))
    rng.shuffle(order)
    per_thread: dict[int, list[int]] = {}
    for i in range(len(program)):
        per_thread.setdefault(program[i][0], []).append(i)
    queues = {t: iter(idx) for t, idx in per_thread.items()}
    replay_order = [next(queues[program[i][0]]) for i in order]

    b = backup()
    b.begin(11, records)
    got = {i: call(b, *program[i]) for i in replay_order}
    assert b.end() == records
    assert [got[i] for i in range(len(program))] == expected


# ---------------------------------------------------------------------- divergence


def replaying(records: bytes, op_id: int = 1) -> Determinizer:
    b = backup()
    b.begin(op_id, records)
    return b


def recorded(*calls: Callable[[Determinizer], object], op_id: int = 1) -> bytes:
    p = primary()
    p.begin(op_id)
    for c in calls:
        c(p)
    return p.end()


def test_wrong_kind_diverges_with_a_clear_message() -> None:
    b = replaying(recorded(lambda d: d.now_ms(thread_id=3), op_id=42), op_id=42)
    with pytest.raises(DivergenceError) as info:
        b.random_below(10, thread_id=3)
    err = info.value
    assert (err.op_id, err.thread_id, err.counter, err.kind) == (42, 3, 0, Kind.TIME)
    msg = str(err)
    for part in ("op 42", "thread 3", "counter 0", "TIME", "RANDOM"):
        assert part in msg


def test_missing_record_diverges() -> None:
    b = replaying(recorded(lambda d: d.now_ms()))
    b.now_ms()
    with pytest.raises(DivergenceError, match=r"thread 0, counter 1, kind TIME.*no more events"):
        b.now_ms()


def test_unknown_thread_diverges() -> None:
    b = replaying(recorded(lambda d: d.now_ms(thread_id=1)))
    with pytest.raises(DivergenceError, match="thread 2"):
        b.now_ms(thread_id=2)


def test_leftover_records_diverge_at_end() -> None:
    b = replaying(recorded(lambda d: d.now_ms(), lambda d: d.random_below(5)))
    b.now_ms()
    with pytest.raises(DivergenceError, match=r"1 recorded events never replayed.*RANDOM"):
        b.end()
    assert b.op_id is None  # finished anyway: the next operation can begin
    b.begin(2)
    b.end()


def test_random_bound_mismatch_diverges() -> None:
    b = replaying(recorded(lambda d: d.random_below(6)))
    with pytest.raises(DivergenceError, match="below 6, replica asks below 7"):
        b.random_below(7)


def test_random_bytes_versus_bounded_draw_diverges() -> None:
    b = replaying(recorded(lambda d: d.random_bytes(8), lambda d: d.random_below(8)))
    with pytest.raises(DivergenceError, match="random bytes"):
        b.random_below(8)
    b = replaying(recorded(lambda d: d.random_below(8)))
    with pytest.raises(DivergenceError, match="bounded int"):
        b.random_bytes(8)
    b = replaying(recorded(lambda d: d.random_bytes(8)))
    with pytest.raises(DivergenceError, match="drew 8 bytes, replica asks for 4"):
        b.random_bytes(4)


def test_lock_on_another_mutex_diverges() -> None:
    b = replaying(recorded(lambda d: d.acquire_order(1, 0)))
    with pytest.raises(DivergenceError, match=r"acquires mutex 2.*mutex 1"):
        b.may_acquire(2, 0)


def test_lock_where_primary_read_time_diverges() -> None:
    b = replaying(recorded(lambda d: d.now_ms()))
    with pytest.raises(DivergenceError, match="LOCK"):
        b.may_acquire(1, 0)


def test_acquiring_out_of_order_diverges() -> None:
    b = replaying(recorded(lambda d: d.acquire_order(1, 1), lambda d: d.acquire_order(1, 2)))
    assert not b.may_acquire(1, 2)
    with pytest.raises(DivergenceError, match="out of order: thread 1 was next"):
        b.acquired(1, 2)


def test_records_of_another_operation_diverge() -> None:
    records = recorded(lambda d: d.now_ms(), op_id=3)
    with pytest.raises(DivergenceError, match="belongs to op 3"):
        backup().begin(4, records)


def test_counter_gaps_diverge() -> None:
    records = encode_records([VdfRecord(0, 1, 1, Kind.TIME, bytes(8))])
    with pytest.raises(DivergenceError, match="out of sequence"):
        backup().begin(1, records)


def test_malformed_lock_record_diverges() -> None:
    records = encode_records([VdfRecord(0, 1, 0, Kind.LOCK, b"\x01")])
    with pytest.raises(DivergenceError, match="mutex id"):
        backup().begin(1, records)


def test_malformed_values_diverge_on_use() -> None:
    b = replaying(encode_records([VdfRecord(0, 1, 0, Kind.TIME, b"abc")]))
    with pytest.raises(DivergenceError, match="64-bit"):
        b.now_ms()
    b = replaying(encode_records([VdfRecord(0, 1, 0, Kind.RANDOM, b"\x01\x00")]))
    with pytest.raises(DivergenceError, match="malformed"):
        b.random_below(3)
    value = b"\x01" + (2).to_bytes(8, "big") + (7).to_bytes(8, "big")
    b = replaying(encode_records([VdfRecord(0, 1, 0, Kind.RANDOM, value)]))
    with pytest.raises(DivergenceError, match="not below 3"):
        b.random_below(3)


def test_corrupt_records_raise_wire_error() -> None:
    with pytest.raises(WireError):
        backup().begin(1, b"\x01\x00")


def test_abandon_drops_the_operation() -> None:
    b = replaying(recorded(lambda d: d.now_ms()))
    b.abandon()
    assert b.op_id is None
    b.begin(2)
    assert b.end() == b""


# ---------------------------------------------------------------------- misuse


def test_record_mode_needs_sources() -> None:
    with pytest.raises(ValueError):
        Determinizer(Mode.RECORD, None, seeded_entropy())
    with pytest.raises(ValueError):
        Determinizer(Mode.RECORD, fake_clock(), None)


def test_events_need_an_operation() -> None:
    for det in (primary(), backup()):
        with pytest.raises(RuntimeError, match="begin"):
            det.now_ms()
        with pytest.raises(RuntimeError, match="begin"):
            det.end()


def test_begin_twice_is_an_error() -> None:
    p = primary()
    p.begin(1)
    with pytest.raises(RuntimeError, match="still in progress"):
        p.begin(2)


def test_record_mode_refuses_records_and_replay_calls() -> None:
    p = primary()
    with pytest.raises(ValueError):
        p.begin(1, b"\x01")
    p.begin(1)
    with pytest.raises(RuntimeError):
        p.may_acquire(1, 0)
    with pytest.raises(RuntimeError):
        p.acquired(1, 0)
    with pytest.raises(ValueError):
        p.select_input(None)
    b = replaying(b"")
    with pytest.raises(RuntimeError):
        b.acquire_order(1, 0)


@pytest.mark.parametrize("n", [0, -1, 2**64 + 1, True, 1.5])
def test_random_below_rejects_bad_bounds(n: object) -> None:
    p = primary()
    p.begin(1)
    with pytest.raises(ValueError):
        p.random_below(n)  # type: ignore[arg-type]


def test_bad_sources_are_reported() -> None:
    p = Determinizer(Mode.RECORD, lambda: 1.5, seeded_entropy())  # type: ignore[arg-type, return-value]
    p.begin(1)
    with pytest.raises(ValueError, match="clock"):
        p.now_ms()
    p = Determinizer(Mode.RECORD, fake_clock(), lambda n: b"")
    p.begin(1)
    with pytest.raises(ValueError, match="entropy"):
        p.random_bytes(4)


def test_bad_ids_are_rejected() -> None:
    p = primary()
    p.begin(1)
    with pytest.raises(ValueError):
        p.now_ms(thread_id=-1)
    with pytest.raises(ValueError):
        p.acquire_order(2**64, 0)


# ---------------------------------------------------------------------- purity


def test_vdf_package_is_sans_io() -> None:
    root = Path(vdf_pkg.__file__).resolve().parent
    files = sorted(root.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "records.py", "determinizer.py"}
    for f in files:
        assert violations(f.read_text(encoding="utf-8"), f.name) == []
        ast.parse(f.read_text(encoding="utf-8"))
