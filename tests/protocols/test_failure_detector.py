"""Tests for the network + heartbeat-wire failure detector."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protocols.failure_detector import (
    FailureDetector,
    Health,
    Suspicion,
    WireState,
)

T = 0.6  # silence_timeout used throughout
F = 0.2  # default flat_wire_timeout = T / 3


def detector(*nodes: int, now: float = 0.0) -> FailureDetector:
    fd = FailureDetector(silence_timeout=T)
    for node in nodes:
        fd.watch(node, now)
    return fd


# --- configuration -----------------------------------------------------------------------------


def test_default_flat_wire_timeout_is_a_third() -> None:
    fd = FailureDetector(silence_timeout=0.9)
    assert fd.flat_wire_timeout == pytest.approx(0.3)
    assert fd.silence_timeout == 0.9


@pytest.mark.parametrize(
    ("silence", "flat"),
    [(0.0, None), (-1.0, None), (math.nan, None), (math.inf, None), (1.0, 0.0), (1.0, 2.0)],
)
def test_invalid_configuration_rejected(silence: float, flat: float | None) -> None:
    with pytest.raises(ValueError):
        FailureDetector(silence, flat)


def test_flat_wire_timeout_may_equal_silence_timeout() -> None:
    fd = FailureDetector(1.0, 1.0)
    fd.watch(1, 0.0)
    fd.wire_observed(1, WireState.FLAT, 0.0)
    assert fd.health(1, 0.99) is Health.ALIVE
    assert fd.health(1, 1.0) is Health.CRASHED


# --- watching ----------------------------------------------------------------------------------


def test_watch_unwatch_watched() -> None:
    fd = detector(1, 2)
    assert fd.watched() == frozenset({1, 2})
    fd.unwatch(1)
    fd.unwatch(99)  # unknown: ignored
    assert fd.watched() == frozenset({2})


def test_watch_counts_silence_from_now() -> None:
    fd = FailureDetector(T)
    fd.watch(1, 10.0)
    assert fd.health(1, 10.0 + T - 0.01) is Health.ALIVE
    assert fd.health(1, 10.0 + T) is Health.SILENT


def test_watch_is_idempotent_and_does_not_restart_silence() -> None:
    fd = detector(1)
    fd.watch(1, 0.5)
    assert fd.health(1, T) is Health.SILENT


def test_rewatch_after_unwatch_starts_fresh() -> None:
    fd = detector(1)
    fd.unwatch(1)
    fd.watch(1, 5.0)
    assert fd.health(1, 5.0 + T - 0.01) is Health.ALIVE


def test_unwatched_node_queries_raise() -> None:
    fd = detector(1)
    with pytest.raises(KeyError):
        fd.health(2, 0.0)
    with pytest.raises(KeyError):
        fd.suspicion(2, 0.0)


def test_heard_from_unwatched_is_ignored() -> None:
    fd = detector(1)
    fd.heard_from(2, 0.1)
    assert fd.watched() == frozenset({1})
    fd.watch(2, 1.0)  # silence counts from the watch, not from the ignored datagram
    assert fd.health(2, 1.0 + T) is Health.SILENT


# --- the classification rules ------------------------------------------------------------------


def test_silence_beyond_timeout_without_wire_is_silent() -> None:
    fd = detector(1)
    assert fd.health(1, T - 0.001) is Health.ALIVE
    assert fd.health(1, T) is Health.SILENT  # boundary: silence >= timeout


def test_unknown_wire_is_silent() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.UNKNOWN, 0.0)
    assert fd.health(1, T) is Health.SILENT


def test_silence_with_flat_wire_is_crashed_after_short_timeout() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.FLAT, 0.05)
    assert fd.health(1, F - 0.001) is Health.ALIVE
    assert fd.health(1, F) is Health.CRASHED
    assert fd.health(1, T + 5) is Health.CRASHED


def test_silence_with_alive_wire_is_partitioned_not_alive() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.ALIVE, 0.0)
    assert fd.health(1, F) is Health.ALIVE  # the short timeout only applies to a flat wire
    assert fd.health(1, T - 0.001) is Health.ALIVE
    assert fd.health(1, T) is Health.PARTITIONED
    # Fresh wire observations never revive a node the network has gone silent on.
    fd.wire_observed(1, WireState.ALIVE, T + 1)
    assert fd.health(1, T + 1) is Health.PARTITIONED


def test_flat_wire_with_fresh_traffic_is_alive() -> None:
    """A broken or unplugged wire must not kill a node that is talking to us."""
    fd = detector(1)
    fd.wire_observed(1, WireState.FLAT, 0.0)
    for i in range(1, 50):
        fd.heard_from(1, i * F * 0.9)
        assert fd.health(1, i * F * 0.9 + F * 0.5) is Health.ALIVE


def test_hearing_again_clears_suspicion() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.FLAT, 0.0)
    assert fd.health(1, 1.0) is Health.CRASHED
    fd.heard_from(1, 1.0)
    assert fd.health(1, 1.0) is Health.ALIVE
    assert fd.suspicion(1, 1.0) is None


def test_stale_heard_from_does_not_age_node() -> None:
    fd = detector(1)
    fd.heard_from(1, 1.0)
    fd.heard_from(1, 0.5)  # delivered out of order
    assert fd.health(1, 1.0 + T - 0.001) is Health.ALIVE


def test_wire_changes_reclassify_silent_node() -> None:
    fd = detector(1)
    assert fd.health(1, 1.0) is Health.SILENT
    fd.wire_observed(1, WireState.ALIVE, 1.0)
    assert fd.health(1, 1.0) is Health.PARTITIONED
    fd.wire_observed(1, WireState.FLAT, 1.5)  # e.g. after the fence cut its power
    assert fd.health(1, 1.5) is Health.CRASHED
    fd.wire_observed(1, WireState.UNKNOWN, 2.0)
    assert fd.health(1, 2.0) is Health.SILENT


def test_stale_wire_observation_ignored() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.FLAT, 1.0)
    fd.wire_observed(1, WireState.ALIVE, 0.5)
    assert fd.wire_state(1) is WireState.FLAT


def test_wire_evidence_survives_watch_and_unwatch() -> None:
    """The hardware may report only changes, so wire state must not depend on membership."""
    fd = FailureDetector(T)
    fd.wire_observed(1, WireState.FLAT, 0.0)
    assert fd.wire_state(1) is WireState.FLAT
    assert fd.wire_state(2) is WireState.UNKNOWN
    fd.watch(1, 1.0)
    assert fd.health(1, 1.0 + F) is Health.CRASHED
    fd.unwatch(1)
    fd.watch(1, 5.0)
    assert fd.health(1, 5.0 + F) is Health.CRASHED


# --- suspicions --------------------------------------------------------------------------------


def test_suspicion_describes_the_evidence() -> None:
    fd = detector(1, 2, 3)
    fd.wire_observed(1, WireState.FLAT, 0.0)
    fd.wire_observed(2, WireState.ALIVE, 0.0)
    now = 0.412 + T
    s1, s2, s3 = (fd.suspicion(n, now) for n in (1, 2, 3))
    assert s1 == Suspicion(
        node=1,
        health=Health.CRASHED,
        silent_for=now,
        reason="no datagram for 1.012 s and heartbeat wire flat",
    )
    assert s2 is not None and s2.health is Health.PARTITIONED
    assert "heartbeat wire alive" in s2.reason and "fence" in s2.reason
    assert s3 is not None and s3.health is Health.SILENT
    assert s3.reason == "no datagram for 1.012 s and no heartbeat wire evidence"
    assert s3.silent_for == pytest.approx(now)


def test_suspicion_is_frozen() -> None:
    fd = detector(1)
    s = fd.suspicion(1, 10.0)
    assert s is not None
    with pytest.raises(FrozenInstanceError):
        s.health = Health.ALIVE  # type: ignore[misc]


def test_suspects_sorted_and_excludes_alive() -> None:
    fd = detector(5, 3, 1, 4)
    fd.heard_from(4, 0.5)
    fd.wire_observed(5, WireState.FLAT, 0.0)
    assert [s.node for s in fd.suspects(T + 0.1)] == [1, 3, 5]
    assert fd.suspects(0.0) == []


# --- deadlines ---------------------------------------------------------------------------------


def test_no_deadline_without_watched_nodes() -> None:
    fd = FailureDetector(T)
    assert fd.next_deadline() is None
    fd.watch(1, 0.0)
    fd.unwatch(1)
    assert fd.next_deadline() is None


def test_deadline_is_earliest_silence_timeout() -> None:
    fd = FailureDetector(T)
    fd.watch(1, 0.0)
    fd.watch(2, 0.1)
    assert fd.next_deadline() == pytest.approx(T)
    fd.heard_from(1, 0.3)
    assert fd.next_deadline() == pytest.approx(0.1 + T)


def test_flat_wire_shortens_deadline() -> None:
    fd = detector(1, 2)
    fd.wire_observed(2, WireState.FLAT, 0.05)
    assert fd.next_deadline() == pytest.approx(F)
    fd.wire_observed(2, WireState.ALIVE, 0.1)
    assert fd.next_deadline() == pytest.approx(T)


def test_flat_wire_on_long_silent_node_is_due_at_the_change() -> None:
    """Wire goes flat after the short timeout already passed: the node is CRASHED right then."""
    fd = FailureDetector(T)
    fd.watch(1, 0.0)
    fd.wire_observed(1, WireState.ALIVE, 0.0)
    assert fd.suspects(0.5) == []
    fd.wire_observed(1, WireState.FLAT, 0.55)
    assert fd.next_deadline() == pytest.approx(0.55)
    assert [s.health for s in fd.suspects(0.55)] == [Health.CRASHED]


def test_reported_suspicions_do_not_spin_the_timer() -> None:
    """A PARTITIONED peer stays watched while it is fenced; its deadline must not repeat."""
    fd = detector(1, 2)
    fd.wire_observed(1, WireState.ALIVE, 0.0)
    fd.heard_from(2, 0.4)
    assert fd.next_deadline() == pytest.approx(T)
    assert [s.node for s in fd.suspects(T)] == [1]
    assert fd.next_deadline() == pytest.approx(0.4 + T)
    assert [s.node for s in fd.suspects(0.4 + T)] == [1, 2]
    assert fd.next_deadline() is None


def test_health_change_of_reported_suspect_is_a_new_deadline() -> None:
    fd = detector(1)
    fd.wire_observed(1, WireState.ALIVE, 0.0)
    assert [s.health for s in fd.suspects(1.0)] == [Health.PARTITIONED]
    assert fd.next_deadline() is None
    fd.wire_observed(1, WireState.FLAT, 1.2)  # the fence cut its power: proof it is down
    assert fd.next_deadline() == pytest.approx(1.2)
    assert [s.health for s in fd.suspects(1.2)] == [Health.CRASHED]
    assert fd.next_deadline() is None


def test_unreported_past_deadline_survives_other_traffic() -> None:
    """A timer that fires late, after a datagram from another peer, must not lose a suspicion."""
    fd = detector(1, 2)
    fd.heard_from(2, T + 0.05)  # the loop handles this before the timer for node 1
    assert fd.next_deadline() == pytest.approx(T)  # in the past, still offered
    assert [s.node for s in fd.suspects(T + 0.06)] == [1]


def test_deadline_returns_after_node_heard_again() -> None:
    fd = detector(1)
    fd.suspects(T)
    assert fd.next_deadline() is None
    fd.heard_from(1, 2.0)
    assert fd.next_deadline() == pytest.approx(2.0 + T)


def test_deadline_matches_health_exactly_despite_rounding() -> None:
    fd = FailureDetector(0.2, 0.1)
    fd.watch(1, 0.1)
    deadline = fd.next_deadline()
    assert deadline is not None
    assert fd.health(1, math.nextafter(deadline, -math.inf)) is Health.ALIVE
    assert fd.health(1, deadline) is Health.SILENT


# --- property: the deadline never comes after the first suspicion -----------------------------

NODES = st.integers(min_value=1, max_value=5)
WIRES = st.sampled_from(list(WireState))
STEP = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
OPS = st.one_of(
    st.tuples(st.just("watch"), NODES, STEP),
    st.tuples(st.just("unwatch"), NODES, STEP),
    st.tuples(st.just("heard"), NODES, STEP),
    st.tuples(st.just("wire"), NODES, STEP, WIRES),
)


@given(
    silence_timeout=st.floats(min_value=0.01, max_value=2.0),
    flat_fraction=st.floats(min_value=0.01, max_value=1.0),
    ops=st.lists(OPS, max_size=40),
    probes=st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=20),
)
def test_next_deadline_never_later_than_first_suspicion(
    silence_timeout: float,
    flat_fraction: float,
    ops: list[tuple[object, ...]],
    probes: list[float],
) -> None:
    fd = FailureDetector(silence_timeout, silence_timeout * flat_fraction)
    now = 0.0
    for op in ops:
        kind, node, step = op[0], op[1], op[2]
        assert isinstance(node, int) and isinstance(step, float)
        now += step
        if kind == "watch":
            fd.watch(node, now)
        elif kind == "unwatch":
            fd.unwatch(node)
        elif kind == "heard":
            fd.heard_from(node, now)
        else:
            wire = op[3]
            assert isinstance(wire, WireState)
            fd.wire_observed(node, wire, now)

    # From here on no datagrams arrive; time only moves forward.
    deadline = fd.next_deadline()
    if deadline is None:
        assert fd.watched() == frozenset()
    first_suspicion: float | None = None
    times = {now + p for p in probes}
    if deadline is not None:
        times.add(max(now, deadline))
    for t in sorted(times):
        if fd.suspects(t):
            first_suspicion = t
            break
    if first_suspicion is not None:
        assert deadline is not None
        assert deadline <= first_suspicion
    if deadline is not None:
        # Tight: at the deadline (or now, if it is already past) something is suspected.
        assert fd.suspects(max(now, deadline))
        # ... and once reported, the same deadline is not offered again (no timer spin).
        later = fd.next_deadline()
        assert later is None or later > max(now, deadline)


def test_last_heard_is_the_latest_datagram_or_the_watch_start() -> None:
    fd = FailureDetector(0.15)
    fd.watch(2, 1.0)
    assert fd.last_heard(2) == 1.0
    fd.heard_from(2, 1.5)
    fd.heard_from(2, 1.2)  # out of order: ignored
    assert fd.last_heard(2) == 1.5
    with pytest.raises(KeyError):
        fd.last_heard(3)
