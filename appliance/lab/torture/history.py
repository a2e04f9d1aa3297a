"""The operations a fault run's clients performed, as the checkers read them.

Every client thread records each command it sends: when it was invoked, when it completed (if
it did), and what the client learned. The outcome matters more than the reply: an ``OK`` op
happened, a ``FAIL`` op definitely did not (the server refused it before applying it, e.g.
``-READONLY``), and an ``UNKNOWN`` op (a timeout, a dropped connection) may or may not have
happened and may take effect at any time after its invocation. The checkers must treat the
three differently, so the outcome is part of every record rather than inferred from a reply.

A history is written as JSON lines so a failing run can be saved and re-checked offline.
Times are ``time.monotonic()`` floats: one clock for every thread and, on one machine, for
every process and network namespace too.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["History", "Op", "OpKind", "Outcome", "Pending", "Result"]

Result = str | int | None
"""What an op returned: a GET's value (None for nil), an INCR's new integer, nothing for SET."""


class OpKind(Enum):
    """The commands the register and counter workloads issue."""

    GET = "get"
    SET = "set"
    INCR = "incr"


class Outcome(Enum):
    """What the client knows about whether an op took effect."""

    OK = "ok"
    """Acknowledged: it happened, between invoke and complete, with the recorded result."""
    FAIL = "fail"
    """Refused with a guarantee that it was not applied (e.g. -READONLY from a backup)."""
    UNKNOWN = "unknown"
    """Timed out or the connection dropped: it may take effect any time after invoke, or never."""


@dataclass(frozen=True)
class Op:
    """One client operation on one key.

    ``value`` is the argument (the string a SET writes; None for GET and INCR). ``result`` is
    the reply of an ``OK`` op: the string a GET read or None for nil, the integer an INCR
    returned, None for SET; it is None for ``FAIL`` and ``UNKNOWN`` ops. ``complete`` is when
    the client got its answer; an ``UNKNOWN`` op may carry the time the client gave up, but the
    checkers treat it as never completing.
    """

    process: int
    key: str
    kind: OpKind
    value: str | None
    invoke: float
    complete: float | None
    outcome: Outcome
    result: Result = None

    def __post_init__(self) -> None:
        where = f"op of process {self.process} on {self.key!r} ({self.kind.name})"
        if not math.isfinite(self.invoke):
            raise ValueError(f"{where}: invoke time must be finite, got {self.invoke!r}")
        if self.complete is None:
            if self.outcome is not Outcome.UNKNOWN:
                raise ValueError(f"{where}: an {self.outcome.name} op needs a completion time")
        elif not math.isfinite(self.complete) or self.complete < self.invoke:
            raise ValueError(
                f"{where}: completion {self.complete!r} must be finite and not before "
                f"invoke {self.invoke!r}"
            )
        if self.kind is OpKind.SET:
            if not isinstance(self.value, str):
                raise ValueError(f"{where}: SET needs a string value, got {self.value!r}")
        elif self.value is not None:
            raise ValueError(f"{where}: {self.kind.name} takes no value, got {self.value!r}")
        if self.outcome is not Outcome.OK or self.kind is OpKind.SET:
            if self.result is not None:
                raise ValueError(f"{where}: an {self.outcome.name} op has no result")
        elif self.kind is OpKind.GET:
            if self.result is not None and not isinstance(self.result, str):
                raise ValueError(f"{where}: GET reads a string or None, got {self.result!r}")
        elif not isinstance(self.result, int) or isinstance(self.result, bool):
            raise ValueError(f"{where}: INCR returns an integer, got {self.result!r}")

    def describe(self) -> str:
        """One line a person reads in a report: who, what, when, and what came back."""
        arg = f" {self.value!r}" if self.kind is OpKind.SET else ""
        if self.outcome is Outcome.OK:
            got = "" if self.kind is OpKind.SET else f" -> {self.result!r}"
        else:
            got = f" -> {self.outcome.name}"
        end = "..." if self.outcome is Outcome.UNKNOWN else f"{self.complete:.6f}"
        return f"p{self.process} {self.kind.name} {self.key!r}{arg}{got} [{self.invoke:.6f}, {end}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "key": self.key,
            "kind": self.kind.value,
            "value": self.value,
            "invoke": self.invoke,
            "complete": self.complete,
            "outcome": self.outcome.value,
            "result": self.result,
        }

    @classmethod
    def from_json(cls, data: object) -> Op:
        """The op a :meth:`to_json` object describes; a precise error for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"an op is a JSON object, got {data!r}")
        fields = {"process", "key", "kind", "value", "invoke", "complete", "outcome", "result"}
        if set(data) != fields:
            missing, extra = sorted(fields - set(data)), sorted(set(data) - fields)
            raise ValueError(f"op fields: missing {missing}, unexpected {extra}")
        process, key, invoke, complete = (
            data["process"],
            data["key"],
            data["invoke"],
            data["complete"],
        )
        if not isinstance(process, int) or isinstance(process, bool):
            raise ValueError(f"process must be an integer, got {process!r}")
        if not isinstance(key, str):
            raise ValueError(f"key must be a string, got {key!r}")
        if not _is_number(invoke):
            raise ValueError(f"invoke must be a number, got {invoke!r}")
        if complete is not None and not _is_number(complete):
            raise ValueError(f"complete must be a number or null, got {complete!r}")
        try:
            kind, outcome = OpKind(data["kind"]), Outcome(data["outcome"])
        except ValueError as e:
            raise ValueError(f"bad op kind or outcome: {e}") from None
        return cls(
            process=process,
            key=key,
            kind=kind,
            value=data["value"],
            invoke=float(invoke),
            complete=None if complete is None else float(complete),
            outcome=outcome,
            result=data["result"],
        )


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class Pending:
    """An op invoked and not yet answered: the handle a client passes back to finish it."""

    serial: int
    process: int
    key: str
    kind: OpKind
    value: str | None
    invoke: float


class History:
    """The ops of a run in the order they completed, recorded safely from many client threads.

    A client calls :meth:`invoke` just before sending a command and :meth:`finish` when it has
    the answer; ops still pending when the run ends appear as ``UNKNOWN`` in :meth:`ops`, since
    nobody knows whether they took effect. :meth:`add` records a finished op directly.
    """

    def __init__(self, ops: Iterable[Op] = (), clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._ops: list[Op] = list(ops)
        self._pending: dict[int, Pending] = {}
        self._serial = 0

    def invoke(self, process: int, key: str, kind: OpKind, value: str | None = None) -> Pending:
        """Note that ``process`` is sending a command now; finish it with :meth:`finish`."""
        now = self._clock()
        with self._lock:
            self._serial += 1
            pending = Pending(self._serial, process, key, kind, value, now)
            self._pending[pending.serial] = pending
        return pending

    def finish(self, pending: Pending, outcome: Outcome, result: Result = None) -> Op:
        """Record the answer to ``pending``, completed now (for ``UNKNOWN``: when it gave up)."""
        now = self._clock()
        op = Op(
            process=pending.process,
            key=pending.key,
            kind=pending.kind,
            value=pending.value,
            invoke=pending.invoke,
            complete=now,
            outcome=outcome,
            result=result,
        )
        with self._lock:
            if self._pending.pop(pending.serial, None) is None:
                raise ValueError(f"op {pending.serial} of process {pending.process} finished twice")
            self._ops.append(op)
        return op

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def ops(self) -> list[Op]:
        """Every op so far, with those still pending as ``UNKNOWN`` (no completion time)."""
        with self._lock:
            done = list(self._ops)
            pending = list(self._pending.values())
        return done + [
            Op(p.process, p.key, p.kind, p.value, p.invoke, None, Outcome.UNKNOWN) for p in pending
        ]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops) + len(self._pending)

    def by_key(self) -> dict[str, list[Op]]:
        """The ops of each key, ordered by invocation: the checkers judge keys independently."""
        keys: dict[str, list[Op]] = {}
        for op in sorted(self.ops(), key=lambda o: o.invoke):
            keys.setdefault(op.key, []).append(op)
        return keys

    def to_jsonl(self) -> str:
        """One JSON object per line, in recorded order (pending ops last, as ``UNKNOWN``)."""
        return "".join(json.dumps(op.to_json(), allow_nan=False) + "\n" for op in self.ops())

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        """The history :meth:`to_jsonl` wrote; a bad line is reported with its number."""
        ops = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ops.append(Op.from_json(json.loads(line)))
            except ValueError as e:  # json.JSONDecodeError is a ValueError too
                raise ValueError(f"history line {number}: {e}") from None
        return cls(ops)

    def save(self, path: Path) -> None:
        path.write_text(self.to_jsonl())

    @classmethod
    def load(cls, path: Path) -> History:
        return cls.from_jsonl(path.read_text())
