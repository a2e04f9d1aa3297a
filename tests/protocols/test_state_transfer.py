"""The stream state transfer as the engine's host sees it: offer, fetch, install or retry.

Two engines on a perfect network; the test plays both hosts, including the point-to-point
channel, so every step of the host contract (SnapshotReady, SnapshotOffered, install_state,
state_fetch_failed, SnapshotReleased) is checked on its own.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from appliance.protocols.config import ProtocolConfig, StateTransfer
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import (
    Event,
    SnapshotInstalled,
    SnapshotOffered,
    SnapshotReady,
    SnapshotReleased,
    SnapshotRequested,
)
from appliance.protocols.messages import Body, Role, SecondAck

KEY = b"s" * 32
APP_STATE = b"application state " * 500


def config() -> ProtocolConfig:
    return ProtocolConfig(cluster_id=9, nodes=(1, 2), key=KEY, state_transfer=StateTransfer.STREAM)


class Hosts:
    """Both hosts: node 1 serves snapshots, node 2 hands each offer to ``on_offer``."""

    def __init__(self, on_offer: Callable[[SnapshotOffered, float], None]) -> None:
        self.a = NodeEngine(config(), 1, 1, 0.0)
        self.b = NodeEngine(config(), 2, 1, 0.0)
        self.now = 0.0
        self.on_offer = on_offer
        self.serving: dict[int, SnapshotReady] = {}
        self.events: list[Event] = []
        self.held: list[bytes] | None = None
        """While not None, node 2's host stands still: what reaches it waits here."""
        self.provide: Callable[[NodeEngine, int], None] = lambda e, snapshot_id: e.provide_snapshot(
            snapshot_id, APP_STATE, self.now
        )
        """How node 1's host answers a ``SnapshotRequested`` (whole, by default)."""

    def run(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        end = self.now + seconds
        while self.now < end and not until():
            self.now += 0.001
            running = (self.a,) if self.held is not None else (self.a, self.b)
            for e in running:
                if e.get_timer() <= self.now:
                    e.handle_timer(self.now)
                self.drain(e)
            running = (self.a,) if self.held is not None else (self.a, self.b)
            out = [(e, e.datagrams_to_send(self.now)) for e in running]
            for src, datagrams in out:
                for d in datagrams:
                    if src is self.b:
                        self.a.receive_datagram(d, self.now)
                    elif self.held is not None:
                        self.held.append(d)
                    else:
                        self.b.receive_datagram(d, self.now)

    def thaw(self) -> None:
        held, self.held = self.held or [], None
        for d in held:
            self.b.receive_datagram(d, self.now)

    def drain(self, e: NodeEngine) -> None:
        while (ev := e.next_event()) is not None:
            self.events.append(ev)
            if isinstance(ev, SnapshotRequested):
                self.provide(e, ev.snapshot_id)
            elif isinstance(ev, SnapshotReady):
                self.serving[ev.snapshot_id] = ev
            elif isinstance(ev, SnapshotReleased):
                self.serving.pop(ev.snapshot_id, None)
            elif isinstance(ev, SnapshotOffered):
                self.on_offer(ev, self.now)

    def of(self, kind: type) -> list[Event]:
        return [ev for ev in self.events if isinstance(ev, kind)]


def test_join_by_stream_sends_an_offer_and_never_a_state_chunk() -> None:
    def fetch(ev: SnapshotOffered, now: float) -> None:
        blob = h.serving[ev.snapshot_id].blob
        assert (ev.size, ev.digest) == (len(blob), hashlib.sha256(blob).digest())
        assert (ev.source_node, ev.source_incarnation) == (1, 1)
        assert h.b.install_state(ev.snapshot_id, blob, now)

    h = Hosts(fetch)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert h.a.role is Role.PRIMARY and h.b.role is Role.BACKUP
    sent = h.a.out.sent_by_type
    assert sent["state_offer"] >= 1 and "state" not in sent
    [ready] = h.of(SnapshotReady)
    assert (ready.joiner, ready.joiner_incarnation) == (2, 1)
    [installed] = h.of(SnapshotInstalled)
    assert installed.app_state == APP_STATE
    h.run(0.1)
    assert [ev.snapshot_id for ev in h.of(SnapshotReleased)] == [ready.snapshot_id]
    assert not h.serving, "the primary's host was not told to free the snapshot"
    assert h.b.status()["state_fetches"] == 1


def test_a_blob_that_does_not_match_the_offer_is_refused_and_fetched_again() -> None:
    results: list[bool] = []

    def fetch(ev: SnapshotOffered, now: float) -> None:
        blob = h.serving[ev.snapshot_id].blob
        if not results:
            blob = blob[:-1] + bytes([blob[-1] ^ 1])  # corrupted on the way
        results.append(h.b.install_state(ev.snapshot_id, blob, now))

    h = Hosts(fetch)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert results == [False, True]
    assert h.b.role is Role.BACKUP
    assert h.b.status()["state_fetch_failures"] == 1
    assert len(h.of(SnapshotRequested)) == 1, "the retry reuses the same snapshot"


def test_a_failed_fetch_is_retried_on_a_later_offer_not_at_once() -> None:
    offers: list[float] = []

    def fetch(ev: SnapshotOffered, now: float) -> None:
        offers.append(now)
        if len(offers) < 3:
            h.b.state_fetch_failed(ev.snapshot_id, "connection refused", now)
        else:
            assert h.b.install_state(ev.snapshot_id, h.serving[ev.snapshot_id].blob, now)

    h = Hosts(fetch)
    h.run(3.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP and len(offers) == 3
    assert h.b.status()["state_fetch_last_failure"] == "connection refused"
    retry = h.a.cfg.join_retry
    assert all(b - a >= retry - 1e-9 for a, b in itertools.pairwise(offers))


def test_a_fetch_the_host_never_finishes_ends_at_join_timeout_and_the_join_starts_over() -> None:
    offers: list[SnapshotOffered] = []
    h = Hosts(lambda ev, now: offers.append(ev))  # the host never answers
    h.run(1.0, lambda: bool(offers))
    assert offers and h.b.role is Role.JOINING
    h.run(h.a.cfg.join_timeout + 1.0, lambda: len(offers) > 1)
    assert len(offers) == 2 and offers[1].snapshot_id != offers[0].snapshot_id
    assert offers[0].snapshot_id in [ev.snapshot_id for ev in h.of(SnapshotReleased)]
    late = h.b.install_state(offers[0].snapshot_id, b"stale", h.now)
    assert not late, "an expired offer's blob was accepted"
    assert h.b.install_state(offers[1].snapshot_id, h.serving[offers[1].snapshot_id].blob, h.now)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP


def test_a_blob_handed_to_a_member_changes_nothing() -> None:
    def fetch(ev: SnapshotOffered, now: float) -> None:
        h.b.install_state(ev.snapshot_id, h.serving[ev.snapshot_id].blob, now)

    h = Hosts(fetch)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    [ready] = h.of(SnapshotReady)
    delivered = h.b.member.delivered
    assert h.b.install_state(ready.snapshot_id, ready.blob, h.now) is False
    assert h.b.role is Role.BACKUP and h.b.member.delivered == delivered


def test_a_learner_whose_admission_was_dropped_while_it_stood_still_is_adopted() -> None:
    """The host stands still after installing (a large restore): the primary drops the
    admission as failed, the learner then follows on from the snapshot it holds, and the
    primary admits it from there instead of letting it learn until it gives up."""

    def fetch(ev: SnapshotOffered, now: float) -> None:
        assert h.b.install_state(ev.snapshot_id, h.serving[ev.snapshot_id].blob, now)
        h.held = []  # the restore: node 2 stands still before its acknowledgement leaves

    h = Hosts(fetch)
    h.run(1.0, lambda: h.held is not None)
    assert h.b.role is Role.LEARNING
    h.run(h.a.cfg.silence_timeout * 2, lambda: h.a.member.admission is None)
    assert h.a.member.admission is None, "the primary kept waiting for a silent joiner"
    h.thaw()
    h.run(1.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP
    assert h.a.member.adopted == 1
    assert len(h.of(SnapshotRequested)) == 1, "the joiner started over with a new snapshot"


def _fetch_and_install(h: Hosts, results: list[bool]) -> Callable[[SnapshotOffered, float], None]:
    def fetch(ev: SnapshotOffered, now: float) -> None:
        ready = h.serving[ev.snapshot_id]
        assert ev.size == ready.size == len(ready.blob)
        results.append(h.b.install_state(ev.snapshot_id, ready.blob, now))

    return fetch


def test_a_state_given_in_parts_with_the_hosts_digest_is_served_as_one_blob() -> None:
    """A host that built its state in parts and hashed it as it went (the agent does, a
    megabyte per loop iteration) hands both over: the parts are served in order, unjoined,
    and the digest it computed over ``snapshot_head`` and the parts is the offer's."""
    results: list[bool] = []
    h = Hosts(lambda ev, now: fetch(ev, now))
    fetch = _fetch_and_install(h, results)
    parts = (APP_STATE[:100], b"", APP_STATE[100:])

    def provide(e: NodeEngine, snapshot_id: int) -> None:
        head = e.snapshot_head(snapshot_id, len(APP_STATE))
        assert head is not None
        digest = hashlib.sha256(head + b"".join(parts)).digest()
        e.provide_snapshot(snapshot_id, parts, h.now, digest)

    h.provide = provide
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP and results == [True]
    [ready] = h.of(SnapshotReady)
    assert isinstance(ready, SnapshotReady) and ready.parts[1:] == parts
    [installed] = h.of(SnapshotInstalled)
    assert isinstance(installed, SnapshotInstalled) and installed.app_state == APP_STATE


def test_a_wrong_digest_from_the_host_is_refused_by_the_joiner() -> None:
    """The offer's digest is checked against the blob the joiner fetched: a host that hashed
    something else never gets its state installed (the admission times out and retries)."""
    results: list[bool] = []
    h = Hosts(lambda ev, now: fetch(ev, now))
    fetch = _fetch_and_install(h, results)
    h.provide = lambda e, snapshot_id: e.provide_snapshot(
        snapshot_id, (APP_STATE,), h.now, hashlib.sha256(APP_STATE).digest()
    )
    h.run(1.0)
    assert results and not any(results)
    assert h.b.role is not Role.BACKUP and not h.of(SnapshotInstalled)


def test_a_snapshot_head_is_only_given_for_the_admission_in_progress() -> None:
    h = Hosts(lambda ev, now: None)
    assert h.a.snapshot_head(1, 10) is None  # nothing asked for yet
    h.run(2.0, lambda: bool(h.of(SnapshotReady)))
    [ready] = h.of(SnapshotReady)
    assert isinstance(ready, SnapshotReady)
    head = h.a.snapshot_head(ready.snapshot_id, len(APP_STATE))
    assert head is not None and ready.blob == head + APP_STATE
    assert h.a.snapshot_head(ready.snapshot_id + 1, len(APP_STATE)) is None


@pytest.mark.parametrize("cuts", [[1], [2, 3, 5], [7], [64, 200], [len(APP_STATE) // 2], [10**9]])
def test_a_blob_in_parts_installs_like_the_blob_whole_wherever_it_was_cut(cuts: list[int]) -> None:
    """The TCP fetch hands over the parts it read (cut anywhere, even inside the protocol
    state's length) with the digest it computed: the engine joins the application's part."""

    def fetch(ev: SnapshotOffered, now: float) -> None:
        blob = h.serving[ev.snapshot_id].blob
        bounds = [0, *[c for c in cuts if c < len(blob)], len(blob)]
        parts = [blob[a:b] for a, b in itertools.pairwise(bounds)]
        assert h.b.install_state(ev.snapshot_id, parts, now, hashlib.sha256(blob).digest())

    h = Hosts(fetch)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP
    [installed] = h.of(SnapshotInstalled)
    assert installed.app_state == APP_STATE


def test_parts_whose_digest_is_not_the_offers_are_refused() -> None:
    results: list[bool] = []

    def fetch(ev: SnapshotOffered, now: float) -> None:
        blob = h.serving[ev.snapshot_id].blob
        parts = [blob[:10], blob[10:]]
        digest = bytes(32) if not results else None  # then: computed by the engine
        results.append(h.b.install_state(ev.snapshot_id, parts, now, digest))

    h = Hosts(fetch)
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert results == [False, True]


def test_a_joiner_confirms_again_as_a_member_what_it_confirmed_as_a_learner() -> None:
    """A gateway counts only confirmations of the primary's current reign, and a learner's
    carry no view: accepted, the joiner confirms its delivered index again under the view, at
    once, or a reply waiting on it waits for the joiner's next heartbeat."""
    sent: list[tuple[int | None, object]] = []

    def fetch(ev: SnapshotOffered, now: float) -> None:
        assert h.b.install_state(ev.snapshot_id, h.serving[ev.snapshot_id].blob, now)
        h.a.submit(b"ordered while node 2 learns")

    h = Hosts(fetch)
    emit = h.b.member._emit

    def spy(body: Body, **kw: Any) -> None:
        view = h.b.member.view
        sent.append((view.number if view is not None else None, body))
        emit(body, **kw)

    h.b.member._emit = spy  # type: ignore[method-assign]
    h.run(2.0, lambda: h.b.role is Role.BACKUP)
    assert h.b.role is Role.BACKUP
    view = h.b.member.view
    assert view is not None
    h.run(0.002)  # one flush: long before the next heartbeat (20 ms)
    assert h.b.member.delivered > 0
    acks = [b for v, b in sent if v == view.number and isinstance(b, SecondAck)]
    assert acks and acks[0].delivered == h.b.member.delivered
