"""The checks of a fault run besides linearizability, on plain data the runner gathers.

* :func:`lost_writes`: every acknowledged write is still there at the end, on every live node.
* :func:`overlapping_primaries`: never two nodes primary at once (S1), one primary per view.
* :func:`fences_before_promotions`: no backup took over from a failed primary before it was
  fenced.
* :func:`convergence`: every live replica ends with the same state.

Each returns a small frozen result with ``ok`` and lines a person reads in the run's report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from appliance.lab.torture.history import Op, OpKind, Outcome
from appliance.lab.torture.linearizability import parse_int

__all__ = [
    "CheckResult",
    "Fence",
    "PrimaryInterval",
    "Promotion",
    "convergence",
    "fences_before_promotions",
    "lost_writes",
    "overlapping_primaries",
]


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check: ``ok``, what it looked at, and one line per problem found."""

    name: str
    ok: bool
    checked: str
    problems: tuple[str, ...] = ()

    def explain(self) -> str:
        head = f"{self.name}: {'ok' if self.ok else 'FAILED'} ({self.checked})"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _result(name: str, checked: str, problems: list[str]) -> CheckResult:
    return CheckResult(name, not problems, checked, tuple(problems))


def lost_writes(
    ops: Iterable[Op],
    final_states: Mapping[str, Mapping[str, str | None]],
    initial: Mapping[str, str | None] | None = None,
) -> CheckResult:
    """Every acknowledged SET and INCR of ``ops`` visible in each node's final state.

    ``final_states`` maps each live node to the value it holds for every key the history
    wrote (None for an absent key). A register key written by SET must end holding the value
    of a write that no acknowledged write is known to follow in real time: an acknowledged
    SET may be superseded only by a write that could have come after it (an overlapping or
    later acknowledged SET, or an unknown one, which may land at any time). A counter key
    written by INCR must end between the number of acknowledged INCRs and that plus the
    unknown ones (from its initial value). Keys written by both are left to the
    linearizability checker, which models them exactly.
    """
    start = dict(initial or {})
    writes: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind is not OpKind.GET and op.outcome is not Outcome.FAIL:
            writes.setdefault(op.key, []).append(op)
    problems: list[str] = []
    for node, state in final_states.items():
        missing = sorted(k for k in writes if k not in state)
        if missing:
            raise ValueError(
                f"final state of {node} has no entry for keys {missing} (None means absent)"
            )
    mixed = []
    for key in sorted(writes):
        kinds = {op.kind for op in writes[key]}
        if kinds == {OpKind.SET, OpKind.INCR}:
            mixed.append(key)
            continue
        if kinds == {OpKind.SET}:
            allowed = _register_candidates(writes[key], start.get(key))
            for node, state in final_states.items():
                value = state[key]
                if value not in allowed:
                    expected = ", ".join(sorted(map(repr, allowed)))
                    problems.append(
                        f"{node}: {key!r} holds {value!r}, but the last writes were {expected}"
                    )
        else:
            base = parse_int(start.get(key))
            if base is None:
                raise ValueError(f"initial value of counter {key!r} is not an integer")
            acked = sum(op.outcome is Outcome.OK for op in writes[key])
            unknown = len(writes[key]) - acked
            for node, state in final_states.items():
                n = parse_int(state[key])
                if n is None or not base + acked <= n <= base + acked + unknown:
                    problems.append(
                        f"{node}: counter {key!r} is {state[key]!r}, expected {base + acked}"
                        f"..{base + acked + unknown} ({acked} acknowledged INCRs, "
                        f"{unknown} unknown)"
                    )
    checked = f"{len(writes) - len(mixed)} keys on {len(final_states)} nodes"
    if mixed:
        checked += f"; {len(mixed)} keys with both SET and INCR left to linearizability"
    return _result("no lost acknowledged write", checked, problems)


def _register_candidates(writes: Sequence[Op], initial: str | None) -> set[str | None]:
    """The values a register may end with: those of writes not followed by an acked write."""
    acked = [op for op in writes if op.outcome is Outcome.OK]
    last_invoke = max((op.invoke for op in acked), default=None)
    allowed: set[str | None] = set() if acked else {initial}
    for op in writes:
        # An unknown write never completed, so nothing is known to follow it.
        followed = (
            op.outcome is Outcome.OK
            and op.complete is not None
            and last_invoke is not None
            and op.complete < last_invoke
        )
        if not followed:
            allowed.add(op.value)
    return allowed


@dataclass(frozen=True)
class PrimaryInterval:
    """A node serving as primary of ``view`` from ``start`` until ``end`` (None: still is)."""

    node: str
    view: int
    start: float
    end: float | None

    def __post_init__(self) -> None:
        if self.end is not None and self.end < self.start:
            raise ValueError(
                f"{self.node} view {self.view}: ends at {self.end} before it starts at {self.start}"
            )


def overlapping_primaries(
    intervals: Iterable[PrimaryInterval | tuple[str, int, float, float | None]],
) -> CheckResult:
    """No two nodes primary at the same instant, and no view with two different primaries.

    Intervals that only touch (one ends when the other starts) do not overlap.
    """
    spans = sorted(
        (i if isinstance(i, PrimaryInterval) else PrimaryInterval(*i) for i in intervals),
        key=lambda i: i.start,
    )
    problems = []
    inf = float("inf")
    for n, a in enumerate(spans):
        a_end = inf if a.end is None else a.end
        for b in spans[n + 1 :]:
            if b.start >= a_end:
                break
            if b.node != a.node:
                end = min(a_end, inf if b.end is None else b.end)
                problems.append(
                    f"{a.node} (view {a.view}) and {b.node} (view {b.view}) both primary "
                    f"from {b.start:.6f} to {end:.6f}"
                )
    primaries: dict[int, set[str]] = {}
    for s in spans:
        primaries.setdefault(s.view, set()).add(s.node)
    for view, nodes in sorted(primaries.items()):
        if len(nodes) > 1:
            problems.append(f"view {view} has primaries {sorted(nodes)}")
    checked = f"{len(spans)} primary intervals, {len(primaries)} views"
    return _result("one primary at a time", checked, problems)


@dataclass(frozen=True)
class Fence:
    """``target`` confirmed fenced (its power off) at ``time``."""

    target: str
    time: float


@dataclass(frozen=True)
class Promotion:
    """``node`` became primary of ``view`` at ``time``, taking over from failed ``replaces``.

    ``replaces`` is None when no failed primary was replaced (the founding of the cluster, or
    a graceful hand-over, which needs no fence).
    """

    node: str
    view: int
    time: float
    replaces: str | None


def fences_before_promotions(
    fences: Iterable[Fence], promotions: Iterable[Promotion]
) -> CheckResult:
    """Each promotion that replaces a failed primary comes after a fence of that primary.

    The fence must also come after the failed primary's own latest promotion: a fence from an
    earlier failure of the same node does not cover a later one.
    """
    fence_list = sorted(fences, key=lambda f: f.time)
    ordered = sorted(promotions, key=lambda p: p.time)
    problems = []
    became: dict[str, float] = {}
    for p in ordered:
        if p.replaces is not None:
            since = became.get(p.replaces, float("-inf"))
            if not any(f.target == p.replaces and since <= f.time <= p.time for f in fence_list):
                problems.append(
                    f"{p.node} became primary of view {p.view} at {p.time:.6f} replacing "
                    f"{p.replaces}, which was not fenced since it became primary"
                    + ("" if since == float("-inf") else f" at {since:.6f}")
                )
        became[p.node] = p.time
    failovers = sum(p.replaces is not None for p in ordered)
    checked = f"{failovers} failovers, {len(fence_list)} fences"
    return _result("fenced before promotion", checked, problems)


def convergence(digests: Mapping[str, str]) -> CheckResult:
    """All live replicas report the same state digest (and at least one reports one)."""
    groups: dict[str, list[str]] = {}
    for node, digest in sorted(digests.items()):
        groups.setdefault(digest, []).append(node)
    problems = []
    if not groups:
        problems.append("no live replica reported a digest")
    elif len(groups) > 1:
        problems += [f"digest {d}: {', '.join(nodes)}" for d, nodes in sorted(groups.items())]
    return _result("convergence", f"{len(digests)} live replicas", problems)
