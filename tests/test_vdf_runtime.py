"""The threaded VDF runtime: real threads replay the primary's lock order, time and randomness.

The key test runs a 4-thread application with two shared locks as a primary (real clock, real
entropy, real OS scheduling) and as two semi-active backups that execute every operation in the
primary's order from the shipped records, and checks the backups end in exactly the primary's
state, while the same application without the VDF does not even agree with itself.

Every wait here has a timeout; the whole module runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import pytest

from appliance.protocols.vdf import Determinizer, DivergenceError, Kind, Mode, decode_records
from appliance.vdf_runtime import (
    AUTO_MUTEX_BASE,
    DeterministicLock,
    DeterministicRandom,
    VdfRuntime,
    interpose,
)
from tests import vdf_app

JOIN_TIMEOUT = 10.0
N_THREADS = 4
STEPS = 25
OPS = 3


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def primary_runtime(**kwargs: Any) -> VdfRuntime:
    return VdfRuntime(Determinizer(Mode.RECORD, wall_ms, os.urandom), **kwargs)


def backup_runtime(**kwargs: Any) -> VdfRuntime:
    return VdfRuntime(Determinizer(Mode.REPLAY, None, None), **kwargs)


def run_threads(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"


# ---------------------------------------------------------------------- the application


class Platform(Protocol):
    """What the application needs from its environment: plain Python, or the VDF."""

    def lock(self, index: int) -> AbstractContextManager[Any]: ...

    def now_ms(self) -> int: ...

    def random_below(self, n: int) -> int: ...

    def spawn(self, fn: Callable[[], None]) -> threading.Thread: ...


@dataclass
class SharedState:
    lists: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    errors: list[BaseException] = field(default_factory=list)

    def digest(self) -> str:
        return hashlib.sha256(repr(self.lists).encode()).hexdigest()


def worker(
    p: Platform, state: SharedState, wid: int, op: int, jitter: random.Random | None
) -> None:
    """Each step takes lock A or B at a random point and transforms that lock's list."""
    try:
        for step in range(STEPS):
            which = p.random_below(2)
            time.sleep(0)  # let the OS interleave the workers differently each run
            if jitter is not None and jitter.random() < 0.2:
                time.sleep(jitter.random() / 2000)  # backups: timing unlike the primary's
            with p.lock(which):
                lst = state.lists[which]
                t = p.now_ms()
                x = p.random_below(1000)
                prev = lst[-1] if lst else op
                time.sleep(0)
                lst.append((prev * 31 + x + wid * 7 + step + t % 11) % 1_000_003)
                if len(lst) % 5 == 0:
                    lst[len(lst) // 2] ^= x
            if p.random_below(4) == 0:
                time.sleep(0)
    except BaseException as exc:
        state.errors.append(exc)


def run_operation(p: Platform, state: SharedState, op: int, jitter: random.Random | None) -> None:
    threads = [p.spawn(partial(worker, p, state, wid, op, jitter)) for wid in range(N_THREADS)]
    run_threads(threads)
    if state.errors:
        raise state.errors[0]


class PlainPlatform:
    """No VDF: real locks, the real clock, the process's own randomness."""

    def __init__(self, seeded: bool = False) -> None:
        self._locks = (threading.Lock(), threading.Lock())
        self._seeded = seeded
        self._rngs: dict[int, random.Random] = {}

    def lock(self, index: int) -> AbstractContextManager[Any]:
        return self._locks[index]

    def now_ms(self) -> int:
        return 0 if self._seeded else wall_ms()

    def random_below(self, n: int) -> int:
        if not self._seeded:
            return random.randrange(n)
        ident = threading.get_ident()
        rng = self._rngs.setdefault(ident, random.Random(len(self._rngs)))
        return rng.randrange(n)

    def spawn(self, fn: Callable[[], None]) -> threading.Thread:
        return threading.Thread(target=fn)


class VdfPlatform:
    def __init__(self, runtime: VdfRuntime) -> None:
        self.runtime = runtime

    def lock(self, index: int) -> AbstractContextManager[Any]:
        return self.runtime.lock(index)

    def now_ms(self) -> int:
        return self.runtime.now_ms()

    def random_below(self, n: int) -> int:
        return self.runtime.random_below(n)

    def spawn(self, fn: Callable[[], None]) -> threading.Thread:
        return self.runtime.thread(fn)


def plain_digest(seeded: bool = False) -> str:
    p, state = PlainPlatform(seeded), SharedState()
    for op in range(1, OPS + 1):
        run_operation(p, state, op, None)
    return state.digest()


def run_primary() -> tuple[str, list[bytes]]:
    rt = primary_runtime()
    p, state, shipped = VdfPlatform(rt), SharedState(), []
    for op in range(1, OPS + 1):
        rt.begin(op)
        run_operation(p, state, op, None)
        shipped.append(rt.end())
    return state.digest(), shipped


def run_backup(shipped: list[bytes], jitter_seed: int) -> str:
    """Semi-active: execute every operation in the primary's order, replaying its records."""
    rt = backup_runtime()
    p, state = VdfPlatform(rt), SharedState()
    jitter = random.Random(jitter_seed)
    for op, records in enumerate(shipped, start=1):
        rt.begin(op, records)
        run_operation(p, state, op, jitter)
        assert rt.end() == records
    return state.digest()


def differing_pair(make: Callable[[], str], tries: int = 10) -> bool:
    first = make()
    return any(make() != first for _ in range(tries))


# ---------------------------------------------------------------------- the key test


def test_without_vdf_runs_diverge() -> None:
    assert differing_pair(plain_digest), "independent runs without the VDF never differed"


def test_without_vdf_interleaving_alone_diverges() -> None:
    """Even with per-thread seeded randomness and no clock, OS scheduling changes the state."""
    assert differing_pair(lambda: plain_digest(seeded=True), tries=20)


def test_semi_active_backups_replay_the_primary_exactly() -> None:
    digest, shipped = run_primary()
    assert len(shipped) == OPS
    for records in shipped:
        kinds = {r.kind for r in decode_records(records)}
        assert kinds == {Kind.LOCK, Kind.TIME, Kind.RANDOM}
    backups = [run_backup(shipped, jitter_seed) for jitter_seed in (1, 2)]
    assert backups == [digest, digest]


def test_two_primaries_disagree_but_each_backup_follows_its_own() -> None:
    d1, s1 = run_primary()
    d2, s2 = run_primary()
    assert d1 != d2  # real entropy and clock: independent primaries differ
    assert run_backup(s1, 3) == d1
    assert run_backup(s2, 4) == d2


# ---------------------------------------------------------------------- concurrency and order


def barrier_inside_own_mutex(rt: VdfRuntime, barrier: threading.Barrier) -> list[BaseException]:
    errors: list[BaseException] = []

    def inside(mutex_id: int) -> None:
        try:
            with rt.lock(mutex_id):
                barrier.wait()  # both threads inside their critical sections at once
        except BaseException as exc:
            errors.append(exc)

    run_threads([rt.thread(inside, 1), rt.thread(inside, 2)])
    return errors


def test_different_mutexes_run_concurrently_under_replay() -> None:
    primary = primary_runtime()
    primary.begin(1)
    assert barrier_inside_own_mutex(primary, threading.Barrier(2, timeout=5)) == []
    records = primary.end()

    backup = backup_runtime()
    backup.begin(1, records)
    assert barrier_inside_own_mutex(backup, threading.Barrier(2, timeout=5)) == []
    backup.end()


def test_the_barrier_detects_serialisation() -> None:
    """Negative control: two threads on the *same* mutex cannot meet inside it."""
    rt = primary_runtime()
    rt.begin(1)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=0.2)

    def inside() -> None:
        try:
            with rt.lock(7):
                barrier.wait()
        except BaseException as exc:
            errors.append(exc)

    run_threads([rt.thread(inside), rt.thread(inside)])
    rt.end()
    assert errors
    assert all(isinstance(e, threading.BrokenBarrierError) for e in errors)


def test_replay_enforces_the_recorded_order_against_timing() -> None:
    """The primary's threads took the mutex in order 3, 1, 2; backups keep it even when thread
    1 arrives first and thread 3 last."""
    primary = primary_runtime()
    primary.begin(1)
    order: list[int] = []
    turn = {n: threading.Event() for n in (1, 2, 3)}

    def primary_worker(me: int, then: int | None) -> None:
        assert turn[me].wait(5)
        with primary.lock(0):
            order.append(me)
        if then is not None:
            turn[then].set()

    threads = [primary.thread(primary_worker, n, nxt) for n, nxt in ((1, 2), (2, None), (3, 1))]
    turn[3].set()
    run_threads(threads)
    records = primary.end()
    assert order == [3, 1, 2]

    backup = backup_runtime()
    backup.begin(1, records)
    replayed: list[int] = []

    def backup_worker(me: int) -> None:
        time.sleep({1: 0.0, 2: 0.01, 3: 0.05}[me])  # arrive in the "wrong" order
        with backup.lock(0):
            replayed.append(me)

    run_threads([backup.thread(backup_worker, n) for n in (1, 2, 3)])
    backup.end()
    assert replayed == [3, 1, 2]


def test_waiting_threads_do_not_hold_up_other_mutexes() -> None:
    """While thread 1 waits for its turn on mutex 0 (thread 2 is first there and late), thread
    3 keeps going on mutex 1 many times."""
    primary = primary_runtime()
    primary.begin(1)
    t2_done = threading.Event()

    def p_first() -> None:
        with primary.lock(0):
            pass
        t2_done.set()

    def p_second() -> None:
        assert t2_done.wait(5)
        with primary.lock(0):
            pass

    def p_other() -> None:
        for _ in range(20):
            with primary.lock(1):
                pass

    # Thread ids: 1 = p_second, 2 = p_first, 3 = p_other.
    run_threads([primary.thread(p_second), primary.thread(p_first), primary.thread(p_other)])
    records = primary.end()

    backup = backup_runtime()
    backup.begin(1, records)
    release_first = threading.Event()
    other_done = threading.Event()

    def b_second() -> None:
        with backup.lock(0):
            pass

    def b_first() -> None:
        assert release_first.wait(5)
        with backup.lock(0):
            pass

    def b_other() -> None:
        for _ in range(20):
            with backup.lock(1):
                pass
        other_done.set()

    threads = [backup.thread(b_second), backup.thread(b_first), backup.thread(b_other)]
    for t in threads:
        t.start()
    assert other_done.wait(5)  # mutex 1 progressed while mutex 0's queue was stuck
    release_first.set()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    backup.end()


# ---------------------------------------------------------------------- divergence and misuse


def test_replay_on_another_mutex_diverges_in_the_thread() -> None:
    primary = primary_runtime()
    primary.begin(1)

    def take_mutex_1() -> None:
        with primary.lock(1):
            pass

    run_threads([primary.thread(take_mutex_1)])
    records = primary.end()

    backup = backup_runtime()
    backup.begin(1, records)
    errors: list[BaseException] = []

    def wrong() -> None:
        try:
            with backup.lock(2):
                pass
        except BaseException as exc:
            errors.append(exc)

    run_threads([backup.thread(wrong)])
    assert len(errors) == 1
    assert isinstance(errors[0], DivergenceError)
    assert "thread 1" in str(errors[0])
    assert not backup.lock(2).locked()
    backup.abandon()


def test_replay_waiting_for_a_thread_that_never_comes_times_out() -> None:
    primary = primary_runtime()
    primary.begin(1)
    first = threading.Event()

    def p1() -> None:
        assert first.wait(5)
        with primary.lock(0):
            pass

    def p2() -> None:
        with primary.lock(0):
            pass
        first.set()

    run_threads([primary.thread(p1), primary.thread(p2)])
    records = primary.end()

    backup = backup_runtime(replay_timeout=0.3)
    backup.begin(1, records)
    errors: list[BaseException] = []

    def b1() -> None:
        try:
            with backup.lock(0):
                pass
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    run_threads([backup.thread(b1)])  # thread 2, first in the recorded order, never runs
    assert 0.25 < time.monotonic() - started < 5
    assert len(errors) == 1
    assert isinstance(errors[0], DivergenceError)
    assert "waited 0.3 s on mutex 0" in str(errors[0])
    backup.abandon()


def test_unregistered_threads_are_refused() -> None:
    rt = primary_runtime()
    rt.begin(1)
    errors: list[BaseException] = []

    def stray() -> None:
        try:
            rt.now_ms()
        except BaseException as exc:
            errors.append(exc)

    run_threads([threading.Thread(target=stray)])
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "register_thread" in str(errors[0])


def test_register_thread_with_explicit_ids() -> None:
    rt = primary_runtime()
    assert rt.current_thread_id() == 0
    seen: list[int] = []
    errors: list[BaseException] = []
    ready = threading.Event()
    done = threading.Event()

    def holder() -> None:
        seen.append(rt.register_thread(40))
        ready.set()
        done.wait(5)

    def clasher() -> None:
        try:
            rt.register_thread(40)
        except BaseException as exc:
            errors.append(exc)

    h = threading.Thread(target=holder)
    h.start()
    assert ready.wait(5)
    run_threads([threading.Thread(target=clasher)])
    done.set()
    h.join(JOIN_TIMEOUT)
    assert seen == [40]
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    # Once the holder is gone the id may be reused (a replacement worker).
    run_threads([threading.Thread(target=lambda: seen.append(rt.register_thread(40)))])
    assert seen == [40, 40]
    # Creation order continues from 1 regardless.
    assert rt.adopt(threading.Thread(target=lambda: None)) == 1
    with pytest.raises(ValueError):
        rt.register_thread()  # the main thread already has id 0


def test_thread_ids_follow_creation_order_not_start_order() -> None:
    rt = primary_runtime()
    rt.begin(1)
    got: dict[str, int] = {}

    def me(name: str) -> None:
        got[name] = rt.current_thread_id()

    threads = [rt.thread(me, name) for name in "abc"]
    run_threads(list(reversed(threads)))
    rt.end()
    assert got == {"a": 1, "b": 2, "c": 3}


def test_try_lock_is_refused() -> None:
    rt = primary_runtime()
    lock = rt.lock(3)
    with pytest.raises(ValueError, match="blocking"):
        lock.acquire(blocking=False)
    with pytest.raises(ValueError, match="blocking"):
        lock.acquire(timeout=1)
    assert not lock.locked()


def test_lock_objects_and_auto_ids() -> None:
    rt = primary_runtime()
    assert rt.lock(5) is rt.lock(5)
    a, b = rt.new_lock(), rt.new_lock()
    assert (a.mutex_id, b.mutex_id) == (AUTO_MUTEX_BASE, AUTO_MUTEX_BASE + 1)
    assert isinstance(a, DeterministicLock)
    with pytest.raises(ValueError):
        rt.lock(-1)
    assert "unlocked" in repr(a)


def test_record_lock_outside_an_operation_releases_the_lock() -> None:
    rt = primary_runtime()
    lock = rt.lock(1)
    with pytest.raises(RuntimeError, match="begin"):
        lock.acquire()
    assert not lock.locked()


def test_runtime_is_a_kv_determinism_source() -> None:
    primary = primary_runtime()
    primary.begin(1)
    values = (primary.now_ms(), primary.random_below(10), primary.random_bytes(4))
    chosen = primary.select_input(b"c1")
    records = primary.end()
    backup = backup_runtime()
    backup.begin(1, records)
    assert (backup.now_ms(), backup.random_below(10), backup.random_bytes(4)) == values
    assert backup.select_input() == chosen
    backup.end()


def test_promote_a_backup_runtime() -> None:
    rt = backup_runtime()
    rt.promote(wall_ms, os.urandom)
    assert rt.mode is Mode.RECORD
    rt.begin(1)
    rt.now_ms()
    assert rt.end()


# ---------------------------------------------------------------------- DeterministicRandom


def random_calls(r: DeterministicRandom) -> list[object]:
    items = list(range(10))
    r.shuffle(items)
    r.seed(42)  # ignored
    return [
        r.random(),
        r.uniform(-1.0, 1.0),
        r.randint(1, 6),
        r.randrange(10),
        r.randrange(10, 0, -3),
        r.randrange(5, 100, 7),
        r.randrange(2**70),
        r.choice("abcdef"),
        r.sample(range(20), 5),
        r.getrandbits(0),
        r.getrandbits(64),
        r.getrandbits(100),
        r.randbytes(6),
        items,
    ]


def test_deterministic_random_replays() -> None:
    primary = primary_runtime()
    primary.begin(1)
    values = random_calls(DeterministicRandom(primary))
    records = primary.end()
    assert 0.0 <= values[0] < 1.0  # type: ignore[operator]
    assert -1.0 <= values[1] <= 1.0  # type: ignore[operator]
    assert 1 <= values[2] <= 6  # type: ignore[operator]
    assert values[4] in (10, 7, 4, 1)
    assert values[5] in range(5, 100, 7)
    assert 0 <= values[6] < 2**70  # type: ignore[operator]
    assert values[11] < 2**100  # type: ignore[operator]
    assert sorted(values[-1]) == list(range(10))  # type: ignore[call-overload]
    backup = backup_runtime()
    backup.begin(1, records)
    assert random_calls(DeterministicRandom(backup)) == values
    backup.end()


def test_deterministic_random_edges() -> None:
    rt = primary_runtime()
    rt.begin(1)
    r = DeterministicRandom(rt)
    with pytest.raises(ValueError):
        r.randrange(0)
    with pytest.raises(ValueError):
        r.randrange(0, 10, 0)
    with pytest.raises(IndexError):
        r.choice([])
    with pytest.raises(ValueError):
        r.sample([1, 2], 3)
    with pytest.raises(ValueError):
        r.getrandbits(-1)
    with pytest.raises(AttributeError, match="gauss"):
        r.gauss  # noqa: B018
    rt.end()


# ---------------------------------------------------------------------- interposition


APP = vars(vdf_app)  # the helper module's globals, where interpose() rebinds names


@pytest.fixture
def restored() -> Iterator[None]:
    yield
    assert APP["time"] is time
    assert APP["random"] is random
    assert APP["threading"] is threading


def run_journal(rt: VdfRuntime, records: bytes = b"") -> tuple[vdf_app.Journal, bytes]:
    with interpose(vdf_app, rt):
        assert APP["time"] is not time
        journal = vdf_app.Journal()
        rt.begin(1, records)
        journal.run(workers=3, steps=10)
        shipped = rt.end()
    return journal, shipped


@pytest.mark.usefixtures("restored")
def test_interposed_module_replays_identically() -> None:
    primary, records = run_journal(primary_runtime())
    assert len(primary.entries) == 30
    kinds = {r.kind for r in decode_records(records)}
    assert kinds == {Kind.TIME, Kind.RANDOM, Kind.LOCK}
    threads = {r.thread_id for r in decode_records(records)}
    assert threads == {0, 1, 2, 3}  # main thread (time_ns) and three workers in creation order
    digests = {run_journal(backup_runtime(), records)[0].digest() for _ in range(2)}
    assert digests == {primary.digest()}


@pytest.mark.usefixtures("restored")
def test_interposed_module_without_vdf_is_nondeterministic() -> None:
    def once() -> str:
        j = vdf_app.Journal()
        j.run(workers=3, steps=10)
        return j.digest()

    assert differing_pair(once)


@pytest.mark.usefixtures("restored")
def test_interpose_restores_on_error() -> None:
    rt = primary_runtime()
    with pytest.raises(KeyError), interpose(vdf_app, rt):
        assert isinstance(APP["random"], DeterministicRandom)
        assert isinstance(APP["threading"].Lock(), DeterministicLock)
        assert APP["threading"].Event is threading.Event
        assert APP["time"].sleep is time.sleep
        raise KeyError("boom")


def test_interpose_leaves_other_bindings_alone() -> None:
    import types

    mod = types.ModuleType("other")
    vars(mod)["time"] = "not the time module"
    with interpose(mod, primary_runtime()):
        assert vars(mod)["time"] == "not the time module"
        assert "random" not in vars(mod)
        assert "threading" not in vars(mod)
    assert vars(mod)["time"] == "not the time module"


# ---------------------------------------------------------------------- the KV service


def test_kv_store_replays_through_the_determinizer() -> None:
    """``KVStore(det=determinizer)``: a semi-active backup reaches the primary's state."""
    kv = pytest.importorskip("appliance.service.kv")
    commands = [
        [b"SET", b"a", b"1"],
        [b"SET", b"b", b"2", b"PX", b"100000"],
        [b"SET", b"c", b"3"],
        [b"RANDOMKEY"],
        [b"PEXPIRE", b"a", b"50000"],
        [b"RANDOMKEY"],
        [b"GET", b"b"],
    ]
    primary_det = Determinizer(Mode.RECORD, wall_ms, os.urandom)
    primary = kv.KVStore(primary_det)
    shipped, replies = [], []
    for op, argv in enumerate(commands, start=1):
        primary_det.begin(op)
        replies.append(primary.execute(argv))
        shipped.append(primary_det.end())
    assert any(Kind.RANDOM in {r.kind for r in decode_records(s)} for s in shipped)
    assert any(Kind.TIME in {r.kind for r in decode_records(s)} for s in shipped)

    backup_det = Determinizer(Mode.REPLAY, None, None)
    backup = kv.KVStore(backup_det)
    for op, (argv, records) in enumerate(zip(commands, shipped, strict=True), start=1):
        backup_det.begin(op, records)
        assert backup.execute(argv) == replies[op - 1]
        backup_det.end()
    assert backup.digest() == primary.digest()
