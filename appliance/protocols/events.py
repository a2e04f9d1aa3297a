"""Events the protocol core hands to its host (the node agent, the simulator, a test).

The host drains them with ``next_event()`` after each call and acts: applies delivered
operations, fences nodes, produces snapshots. Results come back through method calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocols.ldmp.view import View
from appliance.protocols.messages import Role


@dataclass(frozen=True, slots=True)
class Delivered:
    """The group's ``index``-th input, in the primary's total order: apply it.

    ``annex`` is None when this node ordered it as primary: execute it, then attach the annex
    (VDF records, or the state update) with ``annex(index, blob)`` before anything else.
    Otherwise it is what the primary attached: replay the execution with it, or apply it.
    """

    index: int
    src_group: int
    conn_id: int
    seq: int
    payload: bytes
    annex: bytes | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """Every member of the view holds the log up to ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class RoleChanged:
    role: Role
    view: View | None
    reason: str


@dataclass(frozen=True, slots=True)
class ViewInstalled:
    view: View


@dataclass(frozen=True, slots=True)
class FenceRequested:
    """Cut ``node``'s power (and confirm it is off), then call ``fence_result``."""

    node: int
    reason: str


@dataclass(frozen=True, slots=True)
class SnapshotRequested:
    """Call ``provide_snapshot(snapshot_id, app_state)`` with the state after ``index``.

    A host that builds a large state in steps may ask ``snapshot_head`` for the framing and
    hash the snapshot itself as it goes, then pass the ``digest`` along (see
    ``NodeEngine.provide_snapshot``)."""

    snapshot_id: int
    joiner: int
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotReady:
    """Primary (stream transfer): serve the snapshot to node ``joiner`` (that incarnation only)
    as snapshot ``snapshot_id`` over the point-to-point channel, until ``SnapshotReleased``.

    The blob is opaque to the host: protocol state and application state together, exactly
    what the joiner's host hands to ``install_state``. It comes as ``parts`` to be sent one
    after the other: joining a state of megabytes into one object would hold the primary's
    loop for as long as the copy takes.
    """

    snapshot_id: int
    joiner: int
    joiner_incarnation: int
    parts: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))

    @property
    def blob(self) -> bytes:
        """The parts joined (a copy: for tests and the simulator)."""
        return b"".join(self.parts)


@dataclass(frozen=True, slots=True)
class SnapshotReleased:
    """Primary: the admission of snapshot ``snapshot_id`` ended; stop serving it, free it."""

    snapshot_id: int


@dataclass(frozen=True, slots=True)
class SnapshotOffered:
    """Joiner (stream transfer): fetch snapshot ``snapshot_id`` from ``source_node`` (which
    must still run ``source_incarnation``) and call ``install_state(snapshot_id, blob)``, or
    ``state_fetch_failed(snapshot_id, reason)``. ``size`` and ``digest`` (SHA-256) came in an
    authenticated offer: a blob that does not match them is not the snapshot. A new offer
    replaces any fetch still running."""

    source_node: int
    source_incarnation: int
    snapshot_id: int
    index: int
    size: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    """Replace the application state with ``app_state`` (the state after ``index``)."""

    index: int
    app_state: bytes


@dataclass(frozen=True, slots=True)
class StateReset:
    """This node left the group (removed, or saw a newer view without it): clear the state."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stalled:
    """This node itself stood still for ``seconds`` (frozen, starved, suspended).

    The engine forgave every peer the silence it could not have heard meanwhile; the host
    logs it, since a node that stalls is a timing fault its peers may already have acted on.
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class HandoverFinished:
    """The graceful hand-over started by ``step_down`` ended.

    ``ok``: ``successor`` is primary and this node follows it as a backup. Otherwise ``reason``
    says why not; this node is then primary again (nobody took over and it had promised no
    higher view), or it is taking over again through an ordinary primary change, or it left the
    group.
    """

    ok: bool
    successor: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """Gateway: a reply from the service group, in order on the connection."""

    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RequestsStable:
    """Gateway: requests up to ``seq`` are held by every member of the service group."""

    seq: int


Event = (
    Delivered
    | Committed
    | RoleChanged
    | ViewInstalled
    | FenceRequested
    | SnapshotRequested
    | SnapshotReady
    | SnapshotReleased
    | SnapshotOffered
    | SnapshotInstalled
    | StateReset
    | Stalled
    | HandoverFinished
    | ReplyReceived
    | RequestsStable
)
