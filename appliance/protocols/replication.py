"""Replication styles: how a replica turns the group's totally ordered inputs into state.

The protocol core delivers every input in the primary's order (``Delivered``); this module is
the host-side driver that applies them to an application, still sans-I/O (the primary's clock
and entropy are injected):

* **Semi-active**: every replica executes every input, in the primary's order. The primary
  executes under a recording :class:`Determinizer` and attaches the records (time reads, random
  draws, lock order) to the input as its *annex*; backups execute the same input replaying
  those records, so they reach the same state and produce the same output, which they log
  instead of sending (a new primary re-sends what the old one may not have).
* **Semi-passive**: only the primary executes. Its annex is the state update (the effects)
  plus the reply; backups apply the update without executing and log the reply.

Either way a backup delivers an input only together with its annex, and the primary counts an
input as committed only when every backup delivered it, so the state update (or the records to
reproduce it) is held by every member before the reply leaves the group (output commit).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from typing import Protocol

from appliance.protocols.config import is_gateway_group
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import Delivered, Event, StateReset
from appliance.protocols.vdf.determinizer import Determinizer, DivergenceError, Mode
from appliance.protocols.wire.fields import Reader, Writer


class Style(enum.Enum):
    SEMI_ACTIVE = "semi-active"
    SEMI_PASSIVE = "semi-passive"


class Determinism(Protocol):
    def now_ms(self) -> int: ...

    def random_below(self, n: int) -> int: ...


class Application(Protocol):
    """What a replicated service offers the replication layer."""

    def execute(self, request: bytes) -> tuple[bytes, bytes]:
        """Run one request; returns (reply, effects). Non-determinism only via the VDF."""
        ...

    def apply_effects(self, effects: bytes) -> None: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def digest(self) -> bytes: ...


class DeterminismProxy:
    """The application holds this one object; it forwards to the current operation's VDF."""

    def __init__(self) -> None:
        self.target: Determinizer | None = None

    def now_ms(self) -> int:
        if self.target is None:
            raise RuntimeError("the clock is read outside an operation")
        return self.target.now_ms()

    def random_below(self, n: int) -> int:
        if self.target is None:
            raise RuntimeError("randomness is drawn outside an operation")
        return self.target.random_below(n)


def encode_update(effects: bytes, reply: bytes) -> bytes:
    return Writer().blob(effects).blob(reply).getvalue()


def decode_update(annex: bytes) -> tuple[bytes, bytes]:
    r = Reader(annex)
    effects, reply = r.blob(), r.blob()
    r.finish()
    return effects, reply


class Replicator:
    """Applies delivered inputs to an application in the configured style."""

    def __init__(
        self,
        engine: NodeEngine,
        make_app: Callable[[Determinism], Application],
        style: Style,
        clock: Callable[[], int],
        entropy: Callable[[int], bytes],
    ) -> None:
        if not engine.cfg.annexed:
            raise ValueError("replication needs a protocol configured with annexed=True")
        self.engine = engine
        self.style = style
        self.clock = clock
        self.entropy = entropy
        self.det = DeterminismProxy()
        self.make_app = make_app
        self.app = make_app(self.det)
        self.executed = 0
        self.applied = 0
        self.divergences = 0

    def handle(self, event: Event, now: float) -> None:
        """Apply one protocol event (the host passes every event; others are ignored)."""
        if isinstance(event, Delivered):
            self._delivered(event, now)
        elif isinstance(event, StateReset):
            self.app = self.make_app(self.det)

    def _delivered(self, ev: Delivered, now: float) -> None:
        if ev.annex is None:
            reply = self._execute_as_primary(ev)
        elif self.style is Style.SEMI_ACTIVE:
            vdf = Determinizer(Mode.REPLAY)
            vdf.begin(ev.index, ev.annex)
            self.det.target = vdf
            try:
                reply, _ = self.app.execute(ev.payload)
                vdf.end()
            except DivergenceError as e:
                # This replica can no longer reproduce the primary: its state is worthless.
                self.divergences += 1
                self.engine.leave(f"VDF divergence: {e}", now)
                return
            finally:
                self.det.target = None
            self.executed += 1
        else:
            effects, reply = decode_update(ev.annex)
            self.app.apply_effects(effects)
            self.applied += 1
        if is_gateway_group(ev.src_group):
            self.engine.send(ev.src_group, ev.conn_id, reply, after=ev.index)

    def _execute_as_primary(self, ev: Delivered) -> bytes:
        vdf = Determinizer(Mode.RECORD, self.clock, self.entropy)
        vdf.begin(ev.index)
        self.det.target = vdf
        try:
            reply, effects = self.app.execute(ev.payload)
        finally:
            self.det.target = None
        records = vdf.end()
        self.executed += 1
        annex = records if self.style is Style.SEMI_ACTIVE else encode_update(effects, reply)
        self.engine.annex(ev.index, annex)
        return reply

    def snapshot(self) -> bytes:
        return self.app.snapshot()

    def snapshot_steps(self) -> Generator[None, None, tuple[bytes, ...]]:
        """The application's state as of now, serialised in steps as the result is advanced.

        Each ``next()`` does a bounded part of the work and the last raises ``StopIteration``
        with the state in parts (the snapshot is their concatenation), so a host can
        interleave a large snapshot with its other work. An application with a
        ``snapshot_steps`` of its own copies its state cheaply and encodes it step by step;
        otherwise the snapshot is taken whole by this call, and the first step returns it.
        """
        steps = getattr(self.app, "snapshot_steps", None)
        if steps is not None:
            gen: Generator[None, None, tuple[bytes, ...]] = steps()
            return gen
        return _already(self.app.snapshot())

    def restore(self, data: bytes) -> None:
        self.app.restore(data)


def _already(blob: bytes) -> Generator[None, None, tuple[bytes, ...]]:
    """Steps that finish at once with ``blob`` (taken when they were asked for)."""
    yield from ()
    return (blob,)
