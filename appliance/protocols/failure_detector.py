"""Failure detection that fuses network silence with heartbeat-wire evidence.

LLFT's fault model counts both crashes and timing faults as failures, so a peer is suspected
when no authenticated datagram has arrived from it for ``silence_timeout`` seconds. Silence alone
cannot tell a dead node from a cut cable, and the two need different handling: a crashed primary
can be replaced quickly, while a partitioned one is still running and might still serve clients,
so it must be fenced (its power cut) before anyone promotes itself. The GPIO heartbeat wire is
the second, independent witness that tells them apart:

* network silent, wire flat -> :attr:`Health.CRASHED`. Two independent witnesses agree, so the
  shorter ``flat_wire_timeout`` is enough to suspect it; this is what makes failover fast.
* network silent, wire alive -> :attr:`Health.PARTITIONED`. The agent's event loop still toggles
  its pin, so the node is running; it is suspected all the same (it stopped talking to us), but
  it must be fenced before anyone promotes.
* network silent, no wire evidence -> :attr:`Health.SILENT`.
* network fresh -> :attr:`Health.ALIVE`, whatever the wire says: a broken or unplugged wire must
  never kill a healthy node, and a live wire never makes a silent node healthy.

The detector is a pure state machine: it reads no clock, every call takes ``now`` (monotonic
seconds), and it only reports; deciding what to do about a suspicion (fence, propose a new
primary, remove a backup) belongs to the membership protocol.

Driving it from an event loop: arm one timer at :meth:`FailureDetector.next_deadline`; when it
fires, call :meth:`FailureDetector.suspects` and act on the result; re-arm after every call into
the detector.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace


class WireState(enum.Enum):
    """The latest verdict of the hardware layer on a peer's heartbeat wire.

    The hardware layer (not this module) decides when a wire counts as flat: it samples the
    input pin and reports FLAT once it has stopped toggling for its own debounce time.
    """

    ALIVE = "alive"
    FLAT = "flat"
    UNKNOWN = "unknown"


class Health(enum.Enum):
    """What the evidence says about one watched peer."""

    ALIVE = "alive"
    CRASHED = "crashed"
    """Network silent and wire flat: suspect fast."""
    PARTITIONED = "partitioned"
    """Network silent but wire alive: still suspected, and must be fenced before anyone promotes."""
    SILENT = "silent"
    """Network silent, no wire evidence (no wire configured, or its state is unknown)."""


@dataclass(frozen=True, slots=True)
class Suspicion:
    """Why a peer is suspected, as of one instant."""

    node: int
    health: Health
    silent_for: float
    """Seconds since the last datagram from the node (or since it was first watched)."""
    reason: str
    """A sentence for logs and ``INFO``, e.g. "no datagram for 0.412 s and heartbeat wire flat"."""


@dataclass(frozen=True, slots=True)
class _Watch:
    last_heard: float


@dataclass(frozen=True, slots=True)
class _Wire:
    state: WireState
    since: float
    """When the wire last changed to ``state`` (repeated identical observations do not move it)."""


_UNKNOWN_WIRE = _Wire(WireState.UNKNOWN, -math.inf)


def _check_timeout(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


class FailureDetector:
    """Suspects watched peers from network silence, classified by heartbeat-wire evidence."""

    __slots__ = ("_flat_wire_timeout", "_reported_until", "_silence_timeout", "_watches", "_wires")

    def __init__(self, silence_timeout: float, flat_wire_timeout: float | None = None) -> None:
        """Configure the two silences.

        ``flat_wire_timeout`` (default ``silence_timeout / 3``) is the shorter silence after which
        a peer whose wire is FLAT is declared CRASHED. It may not exceed ``silence_timeout``: the
        wire is extra evidence, so it can only make suspicion faster, never slower.
        """
        _check_timeout("silence_timeout", silence_timeout)
        if flat_wire_timeout is None:
            flat_wire_timeout = silence_timeout / 3.0
        _check_timeout("flat_wire_timeout", flat_wire_timeout)
        if flat_wire_timeout > silence_timeout:
            raise ValueError(
                f"flat_wire_timeout ({flat_wire_timeout}) must not exceed "
                f"silence_timeout ({silence_timeout})"
            )
        self._silence_timeout = silence_timeout
        self._flat_wire_timeout = flat_wire_timeout
        self._watches: dict[int, _Watch] = {}
        # Wire evidence is kept for every node, watched or not: the wire is a physical fact that
        # does not depend on membership, and the hardware layer may report it only on change, so
        # forgetting it on unwatch (or before watch) would leave a rejoining peer UNKNOWN forever.
        self._wires: dict[int, _Wire] = {}
        # Latest `now` passed to suspects(): suspicions due by then have been reported, so
        # next_deadline() stops offering them (otherwise a PARTITIONED peer awaiting its fence
        # would make the shell's timer fire in a loop).
        self._reported_until = -math.inf

    @property
    def silence_timeout(self) -> float:
        """Network silence after which any watched peer is suspected."""
        return self._silence_timeout

    @property
    def flat_wire_timeout(self) -> float:
        """Network silence after which a peer with a FLAT wire is declared CRASHED."""
        return self._flat_wire_timeout

    def watch(self, node: int, now: float) -> None:
        """Start monitoring ``node``, counting its silence from ``now``. Idempotent.

        Watching an already-watched node does not restart its silence: re-announcing a view must
        not hide a peer that is already quiet.
        """
        if node not in self._watches:
            self._watches[node] = _Watch(last_heard=now)

    def unwatch(self, node: int) -> None:
        """Stop monitoring ``node`` (it left the view, or was fenced). Unknown nodes are ignored."""
        self._watches.pop(node, None)

    def watched(self) -> frozenset[int]:
        """The nodes currently monitored."""
        return frozenset(self._watches)

    def heard_from(self, node: int, now: float) -> None:
        """Record an authenticated datagram from ``node``; ignored if it is not watched.

        Only authenticated traffic counts, so a forged or replayed datagram cannot keep a dead
        node alive. Hearing from a suspected node clears the suspicion; whether to act on that
        (e.g. after a fence has already started) is the caller's decision. A ``now`` older than
        what was already recorded is ignored, so out-of-order delivery never ages a peer.
        """
        watch = self._watches.get(node)
        if watch is not None and now > watch.last_heard:
            self._watches[node] = replace(watch, last_heard=now)

    def forgive(self, now: float) -> None:
        """This node itself stood still until ``now``: no peer's silence before it is evidence.

        A frozen (SIGSTOP), starved or suspended process hears nothing while it stands still,
        so on waking every peer looks silent, and a deposed primary waking up would fence the
        healthy nodes that replaced it. Silence only counts while we were running to hear it:
        every watched peer's silence restarts at ``now``. A peer that really died meanwhile is
        suspected one timeout later, so detection is delayed by at most the stall itself.
        """
        for node, watch in self._watches.items():
            if now > watch.last_heard:
                self._watches[node] = replace(watch, last_heard=now)

    def wire_observed(self, node: int, state: WireState, now: float) -> None:
        """Record the hardware layer's latest verdict on ``node``'s heartbeat wire.

        Accepted for any node, watched or not (see ``__init__``). The latest observation wins;
        one older than the current state's start is ignored.
        """
        current = self._wires.get(node, _UNKNOWN_WIRE)
        if state is current.state or now < current.since:
            return
        self._wires[node] = _Wire(state=state, since=now)

    def wire_state(self, node: int) -> WireState:
        """The latest wire verdict for ``node`` (UNKNOWN if never observed).

        Useful beyond detection: after a fence, the wire going flat is physical proof that the
        power really went off.
        """
        return self._wires.get(node, _UNKNOWN_WIRE).state

    def health(self, node: int, now: float) -> Health:
        """Classify ``node`` at ``now``. Raises KeyError if it is not watched."""
        watch = self._watch(node)
        wire = self.wire_state(node)
        if now < watch.last_heard + self._timeout_for(wire):
            return Health.ALIVE
        if wire is WireState.FLAT:
            return Health.CRASHED
        if wire is WireState.ALIVE:
            return Health.PARTITIONED
        return Health.SILENT

    def suspicion(self, node: int, now: float) -> Suspicion | None:
        """Why ``node`` is suspected at ``now``, or None if it is ALIVE. KeyError if not watched."""
        health = self.health(node, now)
        if health is Health.ALIVE:
            return None
        silent_for = max(0.0, now - self._watches[node].last_heard)
        return Suspicion(
            node=node,
            health=health,
            silent_for=silent_for,
            reason=_reason(health, silent_for),
        )

    def suspects(self, now: float) -> list[Suspicion]:
        """Every suspected watched node at ``now``, sorted by node id.

        This is the call the shell makes when the timer armed from :meth:`next_deadline` fires,
        so it also marks every suspicion due by ``now`` as reported: :meth:`next_deadline` will
        not offer those deadlines again until new evidence (a datagram, a wire change) moves them.
        """
        self._reported_until = max(self._reported_until, now)
        found = (self.suspicion(node, now) for node in sorted(self._watches))
        return [s for s in found if s is not None]

    def next_deadline(self) -> float | None:
        """When the shell should next call :meth:`suspects`, or None if nothing is pending.

        This is the earliest time at which some watched node becomes suspected (or changes how it
        is suspected, e.g. PARTITIONED -> CRASHED when its wire goes flat), among those whose
        suspicion :meth:`suspects` has not yet reported. It may lie in the past: a deadline that
        came due while the shell was busy handling something else is kept until reported, so a
        late or re-armed timer never loses a suspicion. Given no new datagrams, it is never later
        than the first time :meth:`suspects` would return a non-empty list.
        """
        pending = [
            deadline
            for deadline in (self._deadline(node) for node in self._watches)
            if deadline > self._reported_until
        ]
        return min(pending, default=None)

    def _watch(self, node: int) -> _Watch:
        try:
            return self._watches[node]
        except KeyError:
            raise KeyError(f"node {node} is not watched") from None

    def _timeout_for(self, wire: WireState) -> float:
        return self._flat_wire_timeout if wire is WireState.FLAT else self._silence_timeout

    def _deadline(self, node: int) -> float:
        """When ``node`` enters (or entered) its current suspected state, given current evidence.

        Time-driven, that is ``last_heard + timeout``; but a wire change can also change the
        verdict on an already-silent node, and then the change itself is the event to report.
        Comparisons in :meth:`health` use the same ``last_heard + timeout`` sum, so the deadline
        and the verdict agree exactly despite floating-point rounding.
        """
        wire = self._wires.get(node, _UNKNOWN_WIRE)
        return max(self._watches[node].last_heard + self._timeout_for(wire.state), wire.since)


def _reason(health: Health, silent_for: float) -> str:
    silence = f"no datagram for {silent_for:.3f} s"
    if health is Health.CRASHED:
        return f"{silence} and heartbeat wire flat"
    if health is Health.PARTITIONED:
        return f"{silence} but heartbeat wire alive (partitioned: fence before promoting)"
    return f"{silence} and no heartbeat wire evidence"
