"""Graceful hand-over (``step_down``) on the simulated cluster.

The old primary consents, so nobody is fenced: it stops ordering, waits until every backup holds
everything it delivered, offers the role to rank 2 with HANDOVER, votes for rank 2's proposal
and ends as the last-ranked backup. The cluster checks S1, prefix agreement and the
acknowledged-write invariants after every step, as in the other scenarios.
"""

from __future__ import annotations

import dataclasses

import pytest

from appliance.protocols.events import HandoverFinished
from appliance.protocols.group import HandoverPhase, StepDownRefused
from appliance.protocols.messages import Role
from appliance.sim.cluster import SimCluster
from tests.sim.test_scenarios import (
    formed_cluster,
    primary,
    settle_and_check,
    view_of,
    with_backup_removed,
)


def finished(c: SimCluster) -> HandoverFinished | None:
    return c.handover_log[-1][2] if c.handover_log else None


def test_step_down_hands_over_to_rank_two_without_a_fence() -> None:
    c = formed_cluster(seed=5)
    c.run_until(c.now + 0.5)
    old = primary(c)
    before = view_of(c, old)
    fences, acked = len(c.fence_log), c.stats.acknowledged
    successor = c.step_down(old)
    assert successor == before[1]
    assert c.wait_for(lambda: finished(c) is not None, 1.0)
    result = finished(c)
    assert result is not None and result.ok and result.successor == successor
    assert primary(c) == successor
    after = view_of(c, successor)
    assert after == (successor, *before[2:], old)  # the old primary is ranked last
    assert c.role(old) is Role.BACKUP
    assert len(c.fence_log) == fences, "a consenting primary must not be fenced"
    c.run_until(c.now + 0.5)
    assert c.stats.acknowledged > acked + 20, "writes did not resume"
    settle_and_check(c)
    assert len(c.fence_log) == fences


def test_hand_over_is_quick_and_orders_nothing_while_draining() -> None:
    c = formed_cluster(seed=11)
    c.run_until(c.now + 0.5)
    old = primary(c)
    started = c.now
    c.step_down(old)
    eng = c.nodes[old].engine
    assert eng is not None
    delivered = eng.member.delivered
    assert eng.member.handover_phase in (HandoverPhase.DRAINING, HandoverPhase.OFFERED)
    assert eng.status()["handover"] in ("draining", "offered")
    assert c.wait_for(lambda: finished(c) is not None, 1.0)
    assert eng.member.delivered == delivered  # requests arriving meanwhile were queued
    assert c.now - started < 0.05  # a few round trips, no detection timeout
    settle_and_check(c)


def test_step_down_is_refused_when_alone_or_not_primary() -> None:
    c = formed_cluster(seed=2, nodes=1)
    eng = c.nodes[1].engine
    assert eng is not None and eng.is_primary
    with pytest.raises(StepDownRefused, match="no backup"):
        eng.step_down(c.now)
    assert eng.is_primary
    c3 = formed_cluster(seed=3)
    backup = view_of(c3, primary(c3))[1]
    eng3 = c3.nodes[backup].engine
    assert eng3 is not None
    with pytest.raises(StepDownRefused, match="not the primary"):
        eng3.step_down(c3.now)
    p = c3.nodes[primary(c3)].engine
    assert p is not None
    p.step_down(c3.now)
    with pytest.raises(StepDownRefused, match="already"):
        p.step_down(c3.now)


def test_unanswered_offer_times_out_and_the_primary_resumes() -> None:
    c = formed_cluster(seed=7)
    c.cfg = dataclasses.replace(c.cfg, handover_timeout=0.05)
    for s in c.nodes.values():
        assert s.engine is not None
        s.engine.member.cfg = c.cfg
    c.run_until(c.now + 0.3)
    old = primary(c)
    successor = view_of(c, old)[1]
    c.pause(successor)  # shorter than the silence timeout: not failed, just not answering
    c.at(c.now + 0.1, "thaw", successor)
    fences = len(c.fence_log)
    c.step_down(old)
    assert c.wait_for(lambda: finished(c) is not None, 0.5)
    result = finished(c)
    assert result is not None and not result.ok and "primary again" in result.reason
    assert primary(c) == old
    # The late acceptance (the successor thaws and reads the offer) is still honoured without a
    # fence: the old primary votes, and the successor adopts the longest log.
    c.run_until(c.now + 1.0)
    assert len(c.fence_log) == fences
    settle_and_check(c)


def test_successor_dying_after_the_vote_lets_the_old_primary_take_over_again() -> None:
    c = formed_cluster(seed=13)
    c.run_until(c.now + 0.3)
    old = primary(c)
    successor = view_of(c, old)[1]

    def crash_when_voted() -> None:
        eng = c.nodes[old].engine
        if eng is not None and eng.member.handover_phase is HandoverPhase.VOTED:
            c.power_off(successor, "test pulled the power after the vote")
        elif c.nodes[successor].alive:
            c.at(c.now + 0.0001, "call", crash_when_voted)

    c.step_down(old)
    crash_when_voted()
    assert c.wait_for(lambda: not c.nodes[successor].alive, 0.5)
    assert c.wait_for(lambda: c.primaries() == [old], 2.0)
    result = next(r for _, n, r in c.handover_log if n == old)
    assert not result.ok
    assert any(target == successor for _, _, target in c.fence_log)  # it was not consenting
    settle_and_check(c, 4.0)


def test_a_backup_that_leaves_is_removed_without_a_fence() -> None:
    c = formed_cluster(seed=17)
    c.run_until(c.now + 0.3)
    p = primary(c)
    leaver = view_of(c, p)[-1]
    eng = c.nodes[leaver].engine
    assert eng is not None
    fences = len(c.fence_log)
    eng.leave("agent stopping", c.now)
    c._step(c.nodes[leaver])
    assert c.wait_for(lambda: eng.member.departed, 1.0)
    c.power_off(leaver, "stopped")
    assert leaver not in view_of(c, p)
    c.run_until(c.now + 0.5)
    assert len(c.fence_log) == fences
    settle_and_check(c)


def test_a_successor_that_leaves_meanwhile_passes_the_offer_to_the_next_rank() -> None:
    c = formed_cluster(seed=19)
    c.run_until(c.now + 0.3)
    old = primary(c)
    _, second, third = view_of(c, old)
    fences = len(c.fence_log)
    assert c.step_down(old) == second
    leaver = c.nodes[second].engine
    assert leaver is not None
    leaver.leave("agent stopping", c.now)  # before the offer reaches it
    c._step(c.nodes[second])
    assert c.wait_for(lambda: finished(c) is not None, 1.0)
    result = finished(c)
    assert result is not None and result.ok and result.successor == third
    assert primary(c) == third
    assert len(c.fence_log) == fences
    settle_and_check(c)


def test_a_joiner_whose_snapshot_source_hands_over_joins_again_at_once() -> None:
    # The step-down drops the admission, but the snapshot it offered may still be fetched: the
    # joiner then learns from a node that is no longer primary (and that, should it be primary
    # again, has no admission for it). It must start over, not wait for join_timeout.
    c, p, joiner = with_backup_removed(37)
    c.fetch_rate, c.fetch_reset = 1e5, 0.0  # about 15 ms: longer than the hand-over
    fetches = c.stats.fetches
    c.at(c.now, "power_on", joiner)
    assert c.wait_for(lambda: c.stats.fetches > fetches, 1.0)
    successor = c.step_down(p)
    assert successor is not None
    assert c.wait_for(lambda: finished(c) is not None, 1.0)
    c.power_off(successor, "the successor dies at once: the old primary takes over again")
    assert c.wait_for(lambda: c.role(joiner) is Role.LEARNING, 1.0)
    eng = c.nodes[joiner].engine
    assert eng is not None and eng.member.learning_from is not None
    assert eng.member.learning_from.node == p, "the fetch did not outlive the hand-over"
    c.at(c.now + 0.3, "power_on", successor)
    assert c.wait_for(c.formed, 2.0), "the joiner kept learning from a node with no admission"
    assert c.cfg.join_timeout > 2.0
    settle_and_check(c)
