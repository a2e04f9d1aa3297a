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

A read that fits where it is tried is never worth trying later instead (it changes nothing,
and everything after it stays possible without it), so when the search backtracks over such a
read it gives up that whole step; this keeps a violation cheap to find even thousands of ops
into a history. Workloads should write unique values: an unknown write of a value written
again later may explain any later read of it, which is correct but costly to rule out.

The search is bounded: past a node budget (or an optional time budget) it gives up and says so
as a verdict of its own, rather than hanging the run that called it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from appliance.lab.torture.history import History, Op, OpKind, Outcome

__all__ = [
    "DEFAULT_NODE_BUDGET",
    "KeyVerdict",
    "Linearizability",
    "Verdict",
    "check_history",
    "check_key",
]

DEFAULT_NODE_BUDGET = 1_000_000
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
    has_incr = any(op.kind is OpKind.INCR and op.outcome is not Outcome.FAIL for op in ops)
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
    algorithm: str = "wgl",
) -> KeyVerdict:
    """Whether the ops of one key are linearizable from ``initial`` (None: the key absent).

    ``clock`` only measures the search for the report and enforces ``time_budget`` seconds.
    ``algorithm`` is ``"wgl"`` (the default: Lowe's memoized backtracking search) or
    ``"jit"`` (a sweep through time keeping every possible configuration, which finds a
    violation where it happens without searching the past again, but handles many values
    written repeatedly worse); both give the same verdict within budget, and the tests hold
    them to it.
    """
    all_ops = list(ops)
    keys = {op.key for op in all_ops}
    if len(keys) > 1:
        raise ValueError(f"check_key takes the ops of one key, got keys {sorted(keys)}")
    name = key if key is not None else next(iter(keys), "")
    if initial is not None and not isinstance(initial, str):
        raise ValueError(f"the initial state is a string or None, got {initial!r}")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}, pick one of {sorted(_ALGORITHMS)}")
    kept, total = _prepare(all_ops)
    start = clock()
    search = _ALGORITHMS[algorithm](kept, initial, node_budget, time_budget, clock, start)
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
    algorithm: str = "wgl",
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
                algorithm=algorithm,
            )
            for k in sorted(by_key)
        }
    )


class _Bounded:
    """What both searches share: the budget, the counts, the twins and the best dead end.

    ``twin[i]`` is op ``i``'s class among the unknown writes with the same effect (-1 for
    the rest): only the earliest untried member of a class is worth trying at a step.
    ``readers`` counts the reads of each value and ``unknown_sets`` lists the unknown SETs of
    each, both empty when the key has an INCR: without one, an unknown SET of v can only be
    observed by a read of v, so once every read of v is placed such SETs are dead (never
    worth placing, and placed or not makes no difference to the rest of the search).
    """

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
        self.best_state: State = initial
        self.best_blocked: Op | None = None
        self.best_unplaceable: tuple[Op, ...] = ()
        twins: dict[tuple[OpKind, str | None], int] = {}
        self.twin = [
            twins.setdefault((op.kind, op.value), len(twins))
            if op.outcome is Outcome.UNKNOWN
            else -1
            for op in ops
        ]
        self.readers: dict[str, int] = {}
        self.unknown_sets: dict[str, list[int]] = {}
        if not any(op.kind is OpKind.INCR for op in ops):
            for i, op in enumerate(ops):
                if op.kind is OpKind.GET and isinstance(op.result, str):
                    self.readers[op.result] = self.readers.get(op.result, 0) + 1
                elif op.kind is OpKind.SET and op.outcome is Outcome.UNKNOWN:
                    assert op.value is not None
                    self.unknown_sets.setdefault(op.value, []).append(i)
        self._setup(ops)

    def _setup(self, ops: list[Op]) -> None:
        """What a search builds for itself from the ops, once the shared setup is done."""

    def _spent(self) -> bool:
        """Count one more op tried; True once past the node budget or the time budget."""
        self.nodes += 1
        return self.nodes > self.node_budget or (
            self.deadline is not None and self.nodes % 256 == 0 and self.clock() > self.deadline
        )


class _Search(_Bounded):
    """One run of the search over one key's ops; keeps the deepest point it reached."""

    def _setup(self, ops: list[Op]) -> None:
        self.required = sum(op.outcome is Outcome.OK for op in ops)
        self.head = self._build(ops)
        self.dead_sets = {
            value: sum(1 << i for i in indices) for value, indices in self.unknown_sets.items()
        }
        """The unknown SETs of each value as a bit set over the ops (see :class:`_Bounded`)."""
        self.best: _Frame | None = None
        self.best_depth = -1

    def _build(self, ops: list[Op]) -> _Entry:
        # (time, 0 for an invocation / 1 for a completion, entry): on equal times invocations
        # come first, so ops that touch at an instant count as concurrent (the lenient reading
        # of one clock's ties).
        timeline: list[tuple[float, int, int, _Entry]] = []
        for i, op in enumerate(ops):
            call = _Entry(op, i)
            call.twin = self.twin[i]
            if op.outcome is not Outcome.UNKNOWN:
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
        readers, unknown_sets = self.readers, self.dead_sets
        track = bool(unknown_sets)
        entry = self.head.next
        while placed < self.required:
            if entry is None:  # cannot happen while an acknowledged op is unplaced
                raise AssertionError("entry list ended before every completion")
            op = entry.op
            if op is not None:  # an invocation: try to place its op here
                if self._spent():
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
                while True:
                    if top is None:
                        return Linearizability.NOT_LINEARIZABLE
                    call = top.call
                    state, top, depth = top.state, top.parent, depth - 1
                    tried_twins = stack_twins.pop()
                    linearized &= ~(1 << call.id)
                    placed -= call.match is not None
                    undone = call.op
                    assert undone is not None
                    if track and undone.kind is OpKind.GET:
                        unread = undone.result
                        if isinstance(unread, str):
                            if readers[unread] == 0:
                                dead &= ~unknown_sets.get(unread, 0)
                            readers[unread] += 1
                    self._unlift(call)
                    entry = call.next
                    # A read that fit where it was placed could not hurt there: placing it
                    # later instead can only do worse (it changes nothing, and everything
                    # after it stays possible without it). So its failure fails the level.
                    if undone.kind is not OpKind.GET:
                        break
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


@dataclass(frozen=True)
class _Chain:
    """A linearization so far, newest op first; configurations share their common past."""

    op: Op
    parent: _Chain | None


class _Frontier(_Bounded):
    """The just-in-time search: every configuration the history can be in, swept through time.

    A configuration is the register's state and which still-pending ops are already
    linearized. An invocation only makes its op pending. At a completion every configuration
    must contain that op: those that do not are extended by linearizing pending ops until it
    is placed, and those that cannot be extended die. When none survives, the history is not
    linearizable at exactly that completion, so a violation costs no more to find than a
    clean run: nothing already swept is searched again.
    """

    def _setup(self, ops: list[Op]) -> None:
        self.ops = ops
        self.best_chain: _Chain | None = None

    def best_prefix(self) -> tuple[Op, ...]:
        ops = []
        chain = self.best_chain
        while chain is not None:
            ops.append(chain.op)
            chain = chain.parent
        return tuple(reversed(ops))

    def run(self) -> Linearizability:
        ops = self.ops
        events = [(op.invoke, 0, i) for i, op in enumerate(ops)]
        events += [
            (op.complete, 1, i)
            for i, op in enumerate(ops)
            if op.complete is not None and op.outcome is Outcome.OK  # unknown: never completes
        ]
        events.sort()  # invocations before completions at equal times: ties overlap
        readers, unknown_sets = self.readers, self.unknown_sets
        slot_of: dict[int, int] = {}  # pending op -> its bit in a configuration
        free: list[int] = []
        configs: dict[tuple[State, int], _Chain | None] = {(self.initial, 0): None}
        for _, completes, i in events:
            if not completes:
                op = ops[i]
                if (
                    op.outcome is Outcome.UNKNOWN
                    and op.value in unknown_sets
                    and not readers.get(op.value, 0)
                ):
                    continue  # an unknown SET whose readers are all done: dead already
                slot = slot_of[i] = free.pop() if free else len(slot_of) + len(free)
                if op.kind is OpKind.GET:  # a read that fits now is placed now (see _reads)
                    configs = {
                        (state, lin | 1 << slot if state == op.result else lin): chain
                        if state != op.result
                        else _Chain(op, chain)
                        for (state, lin), chain in configs.items()
                    }
                continue
            survivors = self._complete(configs, slot_of, i)
            if survivors is None:
                return Linearizability.TOO_EXPENSIVE
            if not survivors:
                return Linearizability.NOT_LINEARIZABLE
            configs = survivors
            done = [i]
            read = ops[i].result if ops[i].kind is OpKind.GET else None
            if isinstance(read, str) and read in readers:
                readers[read] -= 1
                if readers[read] == 0:  # nobody can observe these writes any more
                    done += [j for j in unknown_sets.get(read, ()) if j in slot_of]
            for j in done:
                bit = 1 << slot_of[j]
                merged: dict[tuple[State, int], _Chain | None] = {}
                for (state, lin), chain in configs.items():
                    merged.setdefault((state, lin & ~bit), chain)
                configs = merged
                free.append(slot_of.pop(j))
        return Linearizability.LINEARIZABLE

    def _complete(
        self,
        configs: dict[tuple[State, int], _Chain | None],
        slot_of: dict[int, int],
        target: int,
    ) -> dict[tuple[State, int], _Chain | None] | None:
        """The configurations with ``target`` linearized; None when out of budget."""
        ops = self.ops
        bit = 1 << slot_of[target]
        pending = sorted(slot_of.items())  # by op index, which is invocation order
        out: dict[tuple[State, int], _Chain | None] = {}
        seen: set[tuple[State, int]] = set(configs)
        work = list(configs.items())
        while work:
            (state, lin), chain = work.pop()
            if lin & bit:
                out.setdefault((state, lin), chain)
                continue
            twins_tried = 0
            for j, slot in pending:
                if lin >> slot & 1 or ops[j].kind is OpKind.GET:
                    continue  # reads that fit are placed already; the others cannot be
                twin = self.twin[j]
                if twin >= 0:
                    if twins_tried >> twin & 1:
                        continue  # an identical earlier unknown write stands for this one
                    twins_tried |= 1 << twin
                if self._spent():
                    self._stuck(configs, slot_of, target)
                    return None
                fits, after = _step(state, ops[j])
                if not fits:
                    continue
                placed, extended = lin | 1 << slot, _Chain(ops[j], chain)
                for k, read in pending:  # and the pending reads that fit after it, at once
                    fits_read = ops[k].kind is OpKind.GET and ops[k].result == after
                    if fits_read and not placed >> read & 1:
                        placed, extended = placed | 1 << read, _Chain(ops[k], extended)
                config = (after, placed)
                if config in seen:
                    continue
                seen.add(config)
                work.append((config, extended))
        if not out:
            self._stuck(configs, slot_of, target)
        return out

    def _stuck(
        self,
        configs: dict[tuple[State, int], _Chain | None],
        slot_of: dict[int, int],
        target: int,
    ) -> None:
        """Remember where the sweep stopped: one surviving configuration and what was pending."""
        (state, lin), chain = next(iter(configs.items()))
        self.best_chain, self.best_state = chain, state
        self.best_blocked = self.ops[target]
        self.best_unplaceable = tuple(
            self.ops[j]
            for j, slot in sorted(slot_of.items())
            if j != target and not lin >> slot & 1
        )


class _Algorithm(Protocol):
    nodes: int
    best_state: State
    best_blocked: Op | None
    best_unplaceable: tuple[Op, ...]

    def run(self) -> Linearizability: ...

    def best_prefix(self) -> tuple[Op, ...]: ...


_ALGORITHMS: dict[str, Callable[..., _Algorithm]] = {"jit": _Frontier, "wgl": _Search}
