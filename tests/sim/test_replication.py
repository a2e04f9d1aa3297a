"""Semi-active and semi-passive replication of the KV service, end to end in the simulator.

The simulated cluster runs the real KV service in each replica, with the real VDF; the
invariants of the protocol core still hold after every step, and after healing every live
replica must have the same state digest.
"""

from __future__ import annotations

import pytest

from appliance.protocols.messages import Role
from appliance.protocols.replication import Style
from appliance.sim.cluster import SimCluster
from appliance.sim.runner import run_seed

STYLES = [Style.SEMI_ACTIVE, Style.SEMI_PASSIVE]


def kv_cluster(style: Style, seed: int = 1) -> SimCluster:
    c = SimCluster(seed, style=style)
    assert c.wait_for(c.formed, 3.0)
    return c


def primary(c: SimCluster) -> int:
    (p,) = c.primaries()
    return p


def digests(c: SimCluster) -> set[bytes]:
    return {
        s.replicator.app.digest()
        for s in c.nodes.values()
        if s.alive and s.replicator is not None and c.role(s.node) is not Role.JOINING
    }


def settle(c: SimCluster, seconds: float = 3.0) -> None:
    c.clients_on = False
    c.net.faults.sides = {}
    for n, s in c.nodes.items():
        if not s.alive:
            c.at(c.now, "power_on", n)
    c.run_until(c.now + seconds)
    c.check_final()  # includes identical digests on every live replica


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.value)
def test_replicas_stay_identical_under_a_kv_workload(style: Style) -> None:
    c = kv_cluster(style)
    c.run_until(c.now + 2.0)
    settle(c)
    assert c.stats.acknowledged > 150
    (digest,) = digests(c)
    p = c.nodes[primary(c)]
    assert p.replicator is not None and p.replicator.app.snapshot() != b""
    assert len(digest) == 20


def test_semi_passive_backups_apply_updates_without_executing() -> None:
    c = kv_cluster(Style.SEMI_PASSIVE, seed=2)
    c.run_until(c.now + 1.0)
    p = primary(c)
    for n, s in c.nodes.items():
        assert s.replicator is not None
        if n == p:
            assert s.replicator.executed > 0
        else:
            assert s.replicator.executed == 0 and s.replicator.applied > 0
    settle(c)


def test_semi_active_backups_execute_every_operation() -> None:
    c = kv_cluster(Style.SEMI_ACTIVE, seed=3)
    c.run_until(c.now + 1.0)
    for s in c.nodes.values():
        assert s.replicator is not None
        # Joiners started from a snapshot; everything after it they executed themselves.
        assert s.replicator.executed > 50 and s.replicator.applied == 0
    settle(c)


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.value)
def test_primary_change_in_the_middle_of_the_stream(style: Style) -> None:
    c = kv_cluster(style, seed=5)
    c.run_until(c.now + 0.7)
    old = primary(c)
    acked = c.stats.acknowledged
    c.power_off(old, "pull")
    assert c.wait_for(lambda: len(c.primaries()) == 1 and primary(c) != old, 1.0)
    c.run_until(c.now + 0.7)
    assert c.stats.acknowledged > acked + 30, "writes did not resume on the new primary"
    settle(c)


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.value)
def test_a_replica_joins_by_state_transfer_while_writes_continue(style: Style) -> None:
    c = kv_cluster(style, seed=7)
    p = primary(c)
    joiner = next(n for n in c.nodes if n != p)
    c.power_off(joiner, "pull")
    c.run_until(c.now + 0.8)  # writes go on without it, its state grows stale
    c.at(c.now, "power_on", joiner)
    assert c.wait_for(c.formed, 3.0)
    acked = c.stats.acknowledged
    c.run_until(c.now + 0.5)
    assert c.stats.acknowledged > acked + 20  # the joiner now counts for every commit
    settle(c)


def test_replicas_diverge_without_the_vdf() -> None:
    """The control experiment: backups reading their own clock instead of the primary's."""
    c = kv_cluster(Style.SEMI_ACTIVE, seed=11)
    p = primary(c)
    skewed = next(n for n in c.nodes if n != p)
    rep = c.nodes[skewed].replicator
    assert rep is not None
    real = rep._delivered

    def without_vdf(ev: object, now: float) -> None:  # execute like a primary, skewed clock
        from appliance.protocols.events import Delivered
        from appliance.protocols.vdf.determinizer import Determinizer, Mode

        assert isinstance(ev, Delivered)
        if ev.annex is None:
            real(ev, now)
            return
        vdf = Determinizer(
            Mode.RECORD, lambda: 1_700_000_000_000 + int(c.now * 1000) + 250, lambda n: bytes(n)
        )
        vdf.begin(ev.index)
        rep.det.target = vdf
        try:
            reply, _ = rep.app.execute(ev.payload)
        finally:
            rep.det.target = None
        rep.engine.send(ev.src_group, ev.conn_id, reply, after=ev.index)

    rep._delivered = without_vdf  # type: ignore[method-assign]
    diverged = c.wait_for(lambda: len(digests(c)) > 1, 2.0)
    assert diverged, "expiry times read from a skewed clock should make the replicas diverge"


@pytest.mark.parametrize("seed", range(6))
def test_random_faults_in_both_styles(seed: int) -> None:
    for style in STYLES:
        r = run_seed(1000 + seed, style=style)
        assert r.ok, f"{r.error}\n  replay: {r.replay}"


def test_a_backup_whose_replay_diverges_leaves_and_rejoins_by_state_transfer() -> None:
    c = kv_cluster(Style.SEMI_ACTIVE, seed=13)
    p = primary(c)
    victim = next(n for n in c.nodes if n != p)
    rep = c.nodes[victim].replicator
    assert rep is not None
    app = rep.app
    real = app.execute
    tripped: list[bool] = []

    def nondeterministic(request: bytes) -> tuple[bytes, bytes]:
        if not tripped:  # once: draw a number the primary never drew
            tripped.append(True)
            rep.det.random_below(6)
        return real(request)

    app.execute = nondeterministic  # type: ignore[method-assign]
    assert c.wait_for(lambda: rep.divergences == 1, 1.0)
    assert c.wait_for(c.formed, 3.0)
    assert rep.app is not app  # a fresh application, filled by state transfer
    settle(c)


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.value)
def test_output_commit_costs_one_extra_one_way_hop(style: Style) -> None:
    """With every hop taking exactly 1 ms, count the hops from submit to released reply."""
    from appliance.protocols.events import ReplyReceived

    c = SimCluster(5, style=style)
    f = c.net.faults
    f.duplicate, f.jitter, f.outlier, f.base_delay = 0.0, 1e-9, 0.0, 0.001
    assert c.wait_for(c.formed, 3.0)
    submitted: dict[tuple[int, int], float] = {}
    latencies: dict[bool, list[float]] = {True: [], False: []}
    on_client, handle = c._on_client, c._handle_event

    def client(data: tuple[int, int]) -> None:
        sn = c.nodes[data[0]]
        before = set(sn.requests)
        on_client(data)
        for seq in set(sn.requests) - before:
            submitted[(sn.node, seq)] = c.now

    def event(sn: object, ev: object) -> None:
        node = getattr(sn, "node", 0)
        if isinstance(ev, ReplyReceived) and (node, ev.seq) in submitted:
            at_primary = c.primaries() == [node]
            latencies[at_primary].append(c.now - submitted[(node, ev.seq)])
        handle(sn, ev)  # type: ignore[arg-type]

    c._on_client = client  # type: ignore[method-assign]
    c._handle_event = event  # type: ignore[method-assign]
    c.run_until(c.now + 2.0)
    remote = sorted(latencies[False])
    local = sorted(latencies[True])
    assert len(remote) > 50 and len(local) > 20
    # Unreplicated: 2 hops through another node's gateway. Replicated: 3 (request, reply +
    # records, backups' confirmation); through the primary's own gateway: the backups' round.
    assert 0.0029 < remote[len(remote) // 2] < 0.0032
    assert 0.0019 < local[len(local) // 2] < 0.0022
    settle(c)


def test_info_replication_reports_role_view_and_members() -> None:
    from appliance.protocols.events import ReplyReceived
    from appliance.service.resp import decode_reply, encode

    c = kv_cluster(Style.SEMI_ACTIVE, seed=17)
    c.clients_on = False
    c.run_until(c.now + 0.2)
    p = primary(c)
    sn = c.nodes[next(n for n in c.nodes if n != p)]
    assert sn.engine is not None
    request = encode([b"INFO", b"replication"])
    seq = sn.engine.submit(request)
    sn.requests[seq] = request
    replies: list[bytes] = []
    handle = c._handle_event

    def event(node: object, ev: object) -> None:
        if node is sn and isinstance(ev, ReplyReceived) and ev.seq == seq:
            replies.append(ev.payload)
        handle(node, ev)  # type: ignore[arg-type]

    c._handle_event = event  # type: ignore[method-assign]
    c._step(sn)
    assert c.wait_for(lambda: bool(replies), 1.0)
    text = decode_reply(replies[0])
    assert isinstance(text, bytes)
    fields = dict(line.split(":", 1) for line in text.decode().split("\r\n") if ":" in line)
    assert fields["role"] == "master" and fields["llft_role"] == "primary"
    assert fields["primary"] == str(p)
    assert set(fields["members"].split(",")) == {"1", "2", "3"}
    assert fields["replication_lag"].isdigit()
    assert "slave0" in fields and "slave1" in fields
