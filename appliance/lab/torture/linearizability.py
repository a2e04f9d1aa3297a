"""Is a key's history linearizable as one register? The Wing-Gong / Lowe search, memoized.

The model is one Redis string per key: ``SET v`` stores ``v``; ``GET`` returns the stored
string, or None while the key is absent; ``INCR`` parses the stored string as a 64-bit decimal
integer (an absent key counts as 0), stores and returns the successor, and errors on anything
else. A history is linearizable if every acknowledged op can be given one instant between its
invocation and its completion such that replaying the ops in that order through the model
reproduces every result the clients saw.

Outcomes, as clients record them (see :mod:`history`):

* ``FAIL`` ops did not happen: they are left out.
* ``UNKNOWN`` writes (SET, INCR) may take effect at any instant after their invocation or
  never: they have no completion entry, so the search may place them anywhere later or leave
  them out. An unknown INCR's result is not checked. ``UNKNOWN`` reads are left out: a read
  changes nothing, and nobody saw its result.

The search is the algorithm of Lowe's "Testing for linearizability" (2017) as the porcupine
checker implements it: the ops' invocation and completion entries in one time-ordered list; at
each step try to linearize an op whose invocation comes before the first pending completion;
backtrack when a completion is reached whose op is not yet placed; and never visit the same
(set of linearized ops, model state) twice. Keys are independent (P-compositionality), so each
is checked on its own. Two reductions keep unknown writes cheap: an unknown SET of a value that
no read ever returned is dropped when the key has no INCR (placing it could only be observed
through such a read, and the same holds, during the search, of one whose readers are all
placed), and among unknown writes with the same effect only the earliest-invoked
one is tried at each step (the others would lead to the same states).

The search is bounded: past a node budget (or an optional time budget) it gives up and says so
as a verdict of its own, rather than hanging the run that called it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from appliance.lab.torture.history import History, Op, OpKind, Outcome

__all__ = [
    "DEFAULT_NODE_BUDGET",
    "KeyVerdict",
    "Linearizability",
    "Verdict",
    "check_history",
    "check_key",
]

DEFAULT_NODE_BUDGET = 2_000_000
"""Ops tried before giving up: a few seconds of search, far beyond what a sane history needs."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

State = str | None
"""The register: the stored string, None while the key is absent."""


class Linearizability(Enum):
    """The verdict on one key (or, for a history, the worst over its keys)."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    TOO_EXPENSIVE = "unknown: search budget exhausted"


@dataclass(frozen=True)
class KeyVerdict:
    """The result for one key, with what a person needs to find a violation in the history.

    On ``NOT_LINEARIZABLE`` (and ``TOO_EXPENSIVE``), ``prefix`` is the longest sequence of ops
    the search managed to linearize, in linearization order, ``state`` the register after it,
    ``blocked`` the op whose completion was reached before it could be placed, and
    ``unplaceable`` the ops invoked by then that could not be placed next either.
    """

    key: str
    result: Linearizability
    ops: int
    """Ops of the key in the history, all outcomes."""
    checked: int
    """Ops the search had to place or could place (FAIL ops, unknown reads etc. left out)."""
    elapsed: float
    """Seconds of search."""
    nodes: int
    """Ops tried, over the whole search."""
    prefix: tuple[Op, ...] = ()
    state: State = None
    blocked: Op | None = None
    unplaceable: tuple[Op, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result is Linearizability.LINEARIZABLE

    def explain(self, context: int = 5) -> str:
        """A few lines for a report: the verdict, and where the search got stuck."""
        head = (
            f"key {self.key!r}: {self.result.value} ({self.ops} ops, {self.checked} checked, "
            f"{self.nodes} nodes, {self.elapsed * 1000:.1f} ms)"
        )
        if self.ok:
            return head
        lines = [head, f"  longest linearizable prefix: {len(self.prefix)} ops, ending with:"]
        lines += [f"    {op.describe()}" for op in self.prefix[-context:]]
        lines.append(f"  register then holds {self.state!r}")
        if self.blocked is not None:
            lines.append(f"  completed before it could be placed: {self.blocked.describe()}")
        if self.unplaceable:
            lines.append("  none of these can be placed next either:")
            lines += [f"    {op.describe()}" for op in self.unplaceable]
        return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    """The result for a whole history: one :class:`KeyVerdict` per key."""

    keys: Mapping[str, KeyVerdict] = field(default_factory=dict)

    @property
    def result(self) -> Linearizability:
        results = {v.result for v in self.keys.values()}
        for worst in (Linearizability.NOT_LINEARIZABLE, Linearizability.TOO_EXPENSIVE):
            if worst in results:
                return worst
        return Linearizability.LINEARIZABLE

    @property
    def ok(self) -> bool:
        return self.result is Linearizability.LINEARIZABLE

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.keys.items() if v.result is Linearizability.NOT_LINEARIZABLE]

    @property
    def too_expensive(self) -> list[str]:
        return [k for k, v in self.keys.items() if v.result is Linearizability.TOO_EXPENSIVE]

    def explain(self) -> str:
        ops = sum(v.ops for v in self.keys.values())
        elapsed = sum(v.elapsed for v in self.keys.values())
        head = (
            f"linearizability: {self.result.value} ({len(self.keys)} keys, {ops} ops, "
            f"{elapsed:.2f} s)"
        )
        return "\n".join([head, *(v.explain() for v in self.keys.values() if not v.ok)])


def parse_int(state: State) -> int | None:
    """The integer INCR sees in ``state`` (0 when absent), None where Redis would refuse it.

    Redis accepts a decimal 64-bit integer with an optional minus sign and no leading zeros,
    spaces or plus sign (its ``string2ll``).
    """
    if state is None:
        return 0
    digits = state[1:] if state.startswith("-") else state
    if not digits.isascii() or not digits.isdigit():
        return None
    if (digits.startswith("0") and digits != "0") or state == "-0":
        return None
    n = int(state)
    return n if INT64_MIN <= n <= INT64_MAX else None


def _step(state: State, op: Op) -> tuple[bool, State]:
    """Apply ``op`` to the register: whether its result fits, and the state after it."""
    if op.kind is OpKind.GET:
        return op.result == state, state
    if op.kind is OpKind.SET:
        return True, op.value
    n = parse_int(state)
    if n is None or n == INT64_MAX:
        return False, state  # INCR would have errored: it did not take effect
    if op.outcome is Outcome.OK and op.result != n + 1:
        return False, state
    return True, str(n + 1)


class _Entry:
    """A node of the doubly linked entry list: an op's invocation or its completion."""

    __slots__ = ("id", "match", "next", "op", "prev", "twin")

    def __init__(self, op: Op | None, id: int) -> None:
        self.op = op
        self.id = id
        self.match: _Entry | None = None  # on an invocation: its completion (None if unknown)
        self.twin = -1  # equivalence class of unknown writes; -1 for the rest
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


@dataclass(frozen=True)
class _Frame:
    """One linearized op on the search's stack; frames chain so a prefix costs no copy."""

    call: _Entry
    state: State  # the state before this op
    parent: _Frame | None
    depth: int


def _prepare(ops: Iterable[Op]) -> tuple[list[Op], int]:
    """The ops the search works on, and how many ops the key had in all."""
    ops = list(ops)
    has_incr = any(op.kind is OpKind.INCR for op in ops)
    read = {op.result for op in ops if op.kind is OpKind.GET and op.outcome is Outcome.OK}
    kept = []
    for op in ops:
        if op.outcome is Outcome.FAIL:
            continue
        if op.outcome is Outcome.UNKNOWN:
            if op.kind is OpKind.GET:
                continue
            if op.kind is OpKind.SET and not has_incr and op.value not in read:
                continue
        kept.append(op)
    return kept, len(ops)


def check_key(
    ops: Iterable[Op],
    initial: State = None,
    *,
    key: str | None = None,
    node_budget: int = DEFAULT_NODE_BUDGET,
    time_budget: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> KeyVerdict:
    """Whether the ops of one key are linearizable from ``initial`` (None: the key absent).

    ``clock`` only measures the search for the report and enforces ``time_budget`` seconds.
    """
    all_ops = list(ops)
    keys = {op.key for op in all_ops}
    if len(keys) > 1:
        raise ValueError(f"check_key takes the ops of one key, got keys {sorted(keys)}")
    name = key if key is not None else next(iter(keys), "")
    if initial is not None and not isinstance(initial, str):
        raise ValueError(f"the initial state is a string or None, got {initial!r}")
    kept, total = _prepare(all_ops)
    start = clock()
    search = _Search(kept, initial, node_budget, time_budget, clock, start)
    result = search.run()
    elapsed = clock() - start
    if result is Linearizability.LINEARIZABLE:
        return KeyVerdict(name, result, total, len(kept), elapsed, search.nodes)
    return KeyVerdict(
        name,
        result,
        total,
        len(kept),
        elapsed,
        search.nodes,
        prefix=search.best_prefix(),
        state=search.best_state,
        blocked=search.best_blocked,
        unplaceable=search.best_unplaceable,
    )


def check_history(
    history: History | Iterable[Op],
    initial: Mapping[str, State] | None = None,
    *,
    node_budget: int = DEFAULT_NODE_BUDGET,
    time_budget: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Verdict:
    """Check every key on its own; ``initial`` gives keys that did not start absent.

    The budgets apply to each key separately.
    """
    by_key: dict[str, list[Op]] = {}
    for op in history.ops() if isinstance(history, History) else history:
        by_key.setdefault(op.key, []).append(op)
    start = dict(initial or {})
    return Verdict(
        {
            k: check_key(
                by_key[k],
                start.get(k),
                key=k,
                node_budget=node_budget,
                time_budget=time_budget,
                clock=clock,
            )
            for k in sorted(by_key)
        }
    )


class _Search:
    """One run of the search over one key's ops; keeps the deepest point it reached."""

    def __init__(
        self,
        ops: list[Op],
        initial: State,
        node_budget: int,
        time_budget: float | None,
        clock: Callable[[], float],
        start: float,
    ) -> None:
        self.initial = initial
        self.node_budget = node_budget
        self.deadline = None if time_budget is None else start + time_budget
        self.clock = clock
        self.nodes = 0
        self.required = sum(op.outcome is Outcome.OK for op in ops)
        self.head = self._build(ops)
        # Without INCR on the key, an unknown SET of v can only be observed by a read of v:
        # once every read of v is placed, such SETs are dead (never worth placing, and placed
        # or not makes no difference to the rest of the search).
        self.readers: dict[str, int] = {}
        self.unknown_sets: dict[str, int] = {}
        if not any(op.kind is OpKind.INCR for op in ops):
            for i, op in enumerate(ops):
                if op.kind is OpKind.GET and isinstance(op.result, str):
                    self.readers[op.result] = self.readers.get(op.result, 0) + 1
                elif op.kind is OpKind.SET and op.outcome is Outcome.UNKNOWN:
                    assert op.value is not None
                    self.unknown_sets[op.value] = self.unknown_sets.get(op.value, 0) | 1 << i
        self.best: _Frame | None = None
        self.best_depth = -1
        self.best_state: State = initial
        self.best_blocked: Op | None = None
        self.best_unplaceable: tuple[Op, ...] = ()

    def _build(self, ops: list[Op]) -> _Entry:
        # (time, 0 for an invocation / 1 for a completion, entry): on equal times invocations
        # come first, so ops that touch at an instant count as concurrent (the lenient reading
        # of one clock's ties).
        timeline: list[tuple[float, int, int, _Entry]] = []
        twins: dict[tuple[OpKind, str | None], int] = {}
        for i, op in enumerate(ops):
            call = _Entry(op, i)
            if op.outcome is Outcome.UNKNOWN:
                call.twin = twins.setdefault((op.kind, op.value), len(twins))
            else:
                assert op.complete is not None
                ret = _Entry(None, i)
                call.match = ret
                timeline.append((op.complete, 1, i, ret))
            timeline.append((op.invoke, 0, i, call))
        timeline.sort(key=lambda t: (t[0], t[1], t[2]))
        head = _Entry(None, -1)
        prev = head
        for *_, entry in timeline:
            prev.next, entry.prev = entry, prev
            prev = entry
        return head

    @staticmethod
    def _lift(call: _Entry) -> None:
        assert call.prev is not None
        call.prev.next = call.next
        if call.next is not None:
            call.next.prev = call.prev
        ret = call.match
        if ret is not None:
            assert ret.prev is not None
            ret.prev.next = ret.next
            if ret.next is not None:
                ret.next.prev = ret.prev

    @staticmethod
    def _unlift(call: _Entry) -> None:
        ret = call.match
        if ret is not None:
            assert ret.prev is not None
            ret.prev.next = ret
            if ret.next is not None:
                ret.next.prev = ret
        assert call.prev is not None
        call.prev.next = call
        if call.next is not None:
            call.next.prev = call

    def run(self) -> Linearizability:
        state = self.initial
        linearized = 0  # bit i set: op i placed
        placed = 0  # acknowledged ops placed
        seen: set[tuple[int, State]] = set()
        top: _Frame | None = None
        depth = 0
        tried_twins = 0  # bit c set: an unknown write of class c was tried at this step
        stack_twins: list[int] = []
        dead = 0  # bit i set: op i is an unknown SET nobody can observe any more
        readers, unknown_sets = self.readers, self.unknown_sets
        track = bool(unknown_sets)
        entry = self.head.next
        while placed < self.required:
            if entry is None:  # cannot happen while an acknowledged op is unplaced
                raise AssertionError("entry list ended before every completion")
            op = entry.op
            if op is not None:  # an invocation: try to place its op here
                self.nodes += 1
                if self.nodes > self.node_budget or (
                    self.deadline is not None
                    and self.nodes % 4096 == 0
                    and self.clock() > self.deadline
                ):
                    self._record(top, depth, state, entry)
                    return Linearizability.TOO_EXPENSIVE
                if entry.twin >= 0 and tried_twins >> entry.twin & 1:
                    entry = entry.next
                    continue
                if entry.twin >= 0:
                    if track and op.kind is OpKind.SET and dead >> entry.id & 1:
                        entry = entry.next
                        continue
                    tried_twins |= 1 << entry.twin
                fits, after = _step(state, op)
                if fits:
                    bits = linearized | 1 << entry.id
                    newly_dead = 0
                    reads = op.result if track and op.kind is OpKind.GET else None
                    if isinstance(reads, str) and readers[reads] == 1:
                        newly_dead = unknown_sets.get(reads, 0)
                    if (bits | dead | newly_dead, after) not in seen:
                        seen.add((bits | dead | newly_dead, after))
                        top = _Frame(entry, state, top, depth + 1)
                        depth += 1
                        stack_twins.append(tried_twins)
                        tried_twins = 0
                        state, linearized = after, bits
                        placed += entry.match is not None
                        if isinstance(reads, str):
                            readers[reads] -= 1
                            dead |= newly_dead
                        self._lift(entry)
                        entry = self.head.next
                        continue
                entry = entry.next
            else:  # a completion whose op is not placed: this path is dead, backtrack
                if depth > self.best_depth:
                    self._record(top, depth, state, entry)
                if top is None:
                    return Linearizability.NOT_LINEARIZABLE
                call = top.call
                state, top, depth = top.state, top.parent, depth - 1
                tried_twins = stack_twins.pop()
                linearized &= ~(1 << call.id)
                placed -= call.match is not None
                undone = call.op
                if track and undone is not None and undone.kind is OpKind.GET:
                    unread = undone.result
                    if isinstance(unread, str):
                        if readers[unread] == 0:
                            dead &= ~unknown_sets.get(unread, 0)
                        readers[unread] += 1
                self._unlift(call)
                entry = call.next
        return Linearizability.LINEARIZABLE

    def _record(self, top: _Frame | None, depth: int, state: State, stop: _Entry) -> None:
        """Remember the deepest dead end: the report shows where the history stops fitting."""
        self.best, self.best_depth, self.best_state = top, depth, state
        blocked = None
        pending = []
        entry = self.head.next
        while entry is not None and entry is not stop:
            if entry.op is not None:
                pending.append(entry.op)
            entry = entry.next
        if stop.op is None:  # a completion: find its op among the unplaced invocations
            entry = self.head.next
            while entry is not None and entry.match is not stop:
                entry = entry.next
            blocked = entry.op if entry is not None else None
        self.best_blocked = blocked
        self.best_unplaceable = tuple(op for op in pending if op is not blocked)

    def best_prefix(self) -> tuple[Op, ...]:
        ops = []
        frame = self.best
        while frame is not None:
            assert frame.call.op is not None
            ops.append(frame.call.op)
            frame = frame.parent
        return tuple(reversed(ops))
