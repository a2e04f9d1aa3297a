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
from appliance.protocols.steps import Steps
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


HELD_PER_STEP = 32
"""Inputs held during a stepped restore that one step applies after it (about 1 ms)."""


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
        self._restoring: Steps[None] | None = None
        self._held: list[Delivered] = []
        self._now = 0.0
        self.held_last = 0
        """Inputs the last stepped restore held and then applied."""

    def handle(self, event: Event, now: float) -> None:
        """Apply one protocol event (the host passes every event; others are ignored)."""
        self._now = now
        if isinstance(event, Delivered):
            if self._restoring is not None:
                self._held.append(event)  # applied, in order, once the state is restored
            else:
                self._delivered(event, now)
        elif isinstance(event, StateReset):
            self._restoring = None
            self._held = []
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
        self._finish_restore()
        return self.app.snapshot()

    def digest(self) -> bytes:
        """The application's digest (of the restored state, if a restore is under way)."""
        self._finish_restore()
        return self.app.digest()

    def snapshot_steps(self) -> Generator[None, None, tuple[bytes, ...]]:
        """The application's state as of now, serialised in steps as the result is advanced.

        Each ``next()`` does a bounded part of the work and the last raises ``StopIteration``
        with the state in parts (the snapshot is their concatenation), so a host can
        interleave a large snapshot with its other work. An application with a
        ``snapshot_steps`` of its own copies its state cheaply and encodes it step by step;
        otherwise the snapshot is taken whole by this call, and the first step returns it.
        """
        self._finish_restore()  # a snapshot of a half-restored state would be worthless
        steps = getattr(self.app, "snapshot_steps", None)
        if steps is not None:
            gen: Generator[None, None, tuple[bytes, ...]] = steps()
            return gen
        return _already(self.app.snapshot())

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's, in one call."""
        self._restoring = None
        self._held = []
        self.app.restore(data)

    def begin_restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's in steps, each run by :meth:`restore_step`.

        Restoring 100,000 keys takes 60-130 ms; in one call the joiner's host stood still that
        long (no heartbeat, no datagram read) and then had a backlog to catch up on while the
        primary, about to admit it, waited. In steps it keeps following the group: the inputs
        delivered meanwhile (it acknowledges them as usual: it holds them) are kept here and
        applied in order after the last step. An application without ``restore_steps`` is
        restored whole by the first step.
        """
        steps = getattr(self.app, "restore_steps", None)
        state = steps(data) if steps is not None else _at_once(self.app.restore, data)
        self._restoring = self._restore_then_apply(state)
        self._held = []
        self.held_last = 0

    def _restore_then_apply(self, state: Steps[None]) -> Steps[None]:
        """The application's steps, then the inputs held meanwhile, ``HELD_PER_STEP`` a step
        (a joiner that restored 100,000 keys under load holds about 200 of them: 6-8 ms)."""
        yield from state
        while self._held:
            batch, self._held = self._held[:HELD_PER_STEP], self._held[HELD_PER_STEP:]
            for ev in batch:
                self._delivered(ev, self._now)
            self.held_last += len(batch)
            yield

    @property
    def restoring(self) -> bool:
        """A stepped restore is under way (:meth:`restore_step` has more to do)."""
        return self._restoring is not None

    def restore_step(self, now: float) -> bool:
        """One bounded step of the restore :meth:`begin_restore` started; True once the state
        is restored and the inputs held meanwhile applied (at once if there is none).

        A snapshot the application refuses (it passed the offer's digest, so only a bug
        makes one) leaves this replica without a state: it resets and leaves the group, as
        on a divergence, to join again from scratch.
        """
        steps = self._restoring
        if steps is None:
            return True
        self._now = now
        try:
            next(steps)
            return False
        except StopIteration:
            self._restoring = None
        except Exception as e:
            self._restoring = None
            self._held = []
            self.app = self.make_app(self.det)
            self.engine.leave(f"restoring the snapshot failed: {e}", now)
        return True

    def _finish_restore(self) -> None:
        while not self.restore_step(self._now):
            pass


def _at_once(restore: Callable[[bytes], None], data: bytes) -> Steps[None]:
    """Steps that restore ``data`` whole at the first one."""
    restore(data)
    yield from ()


def _already(blob: bytes) -> Generator[None, None, tuple[bytes, ...]]:
    """Steps that finish at once with ``blob`` (taken when they were asked for)."""
    yield from ()
    return (blob,)
