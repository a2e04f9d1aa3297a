"""Histories for the checker tests: built by hand in a line each, or simulated.

The simulation runs a real register: each process issues ops one after another with random
think times and durations, every op that takes effect does so at a random instant inside its
interval, and results are computed by replaying the ops in the order of those instants, so the
history is linearizable by construction (the instants are a witness).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from appliance.lab.torture.history import Op, OpKind, Outcome
from appliance.lab.torture.linearizability import parse_int


def get(p: int, t0: float, t1: float, result: str | None, key: str = "k") -> Op:
    return Op(p, key, OpKind.GET, None, t0, t1, Outcome.OK, result)


def set_(p: int, t0: float, t1: float | None, value: str, outcome: Outcome = Outcome.OK) -> Op:
    return Op(p, "k", OpKind.SET, value, t0, t1, outcome)


def incr(
    p: int, t0: float, t1: float | None, result: int | None, outcome: Outcome = Outcome.OK
) -> Op:
    return Op(p, "k", OpKind.INCR, None, t0, t1, outcome, result)


@dataclass(frozen=True)
class Mix:
    """What a simulated workload issues, as weights, and how often outcomes go wrong."""

    get: int = 5
    set: int = 4
    incr: int = 0
    unknown: float = 0.0
    """Chance a write times out (it then takes effect, or not, at random)."""
    fail: float = 0.0
    """Chance a write is refused (it never takes effect)."""
    values: int = 1000
    late: float = 2.0
    """An unknown write that takes effect does so within this many times its duration."""
    """Distinct values SET writes (small ones repeat values, which the checker must handle)."""


def simulate(
    rng: random.Random, ops: int, processes: int, mix: Mix = Mix(), key: str = "k"
) -> list[Op]:
    """A linearizable history of ``ops`` ops on ``key`` by ``processes`` concurrent clients."""
    clocks = [rng.random() for _ in range(processes)]
    planned: list[tuple[float, int, Op]] = []  # (effect instant, serial, op without result)
    never: list[Op] = []  # unknown writes that did not take effect
    kinds = [OpKind.GET] * mix.get + [OpKind.SET] * mix.set + [OpKind.INCR] * mix.incr
    for serial in range(ops):
        p = rng.randrange(processes)
        invoke = clocks[p] + rng.expovariate(10.0)
        complete = invoke + rng.expovariate(2.0)
        clocks[p] = complete
        kind = rng.choice(kinds)
        value = str(rng.randrange(mix.values)) if kind is OpKind.SET else None
        outcome = Outcome.OK
        if kind is not OpKind.GET:
            roll = rng.random()
            if roll < mix.unknown:
                outcome = Outcome.UNKNOWN
            elif roll < mix.unknown + mix.fail:
                outcome = Outcome.FAIL
        placeholder = 0 if kind is OpKind.INCR and outcome is Outcome.OK else None
        op = Op(p, key, kind, value, invoke, complete, outcome, placeholder)
        if outcome is Outcome.UNKNOWN:
            op = replace(op, complete=None)
            clocks[p] = complete  # the client gave up then and moved on
            if rng.random() < 0.5:
                never.append(op)  # never took effect
                continue
            instant = rng.uniform(invoke, invoke + mix.late * (complete - invoke))
        elif outcome is Outcome.FAIL:
            planned.append((complete, serial, op))
            continue
        else:
            instant = rng.uniform(invoke, complete)
        planned.append((instant, serial, op))
    planned.sort(key=lambda t: (t[0], t[1]))
    state: str | None = None
    history = never
    for _, _, op in planned:
        if op.outcome is Outcome.FAIL:
            history.append(op)
            continue
        if op.kind is OpKind.GET:
            history.append(replace(op, result=state))
        elif op.kind is OpKind.SET:
            state = op.value
            history.append(op)
        else:
            n = parse_int(state)
            if n is None:  # INCR of a non-integer: Redis refuses it, nothing changes
                refused = op.outcome is Outcome.OK  # the client saw the error (or timed out)
                history.append(replace(op, outcome=Outcome.FAIL, result=None) if refused else op)
                continue
            state = str(n + 1)
            history.append(op if op.outcome is Outcome.UNKNOWN else replace(op, result=n + 1))
    history.sort(key=lambda o: o.invoke)
    return history
