"""Primary terms, fences and promotions rebuilt from node logs; gaps and INFO views."""

from __future__ import annotations

from pathlib import Path

from appliance.lab.torture.history import Op, OpKind, Outcome
from appliance.lab.torture.nemesis import Fault, FaultRecord, Step
from appliance.lab.torture.observe import ViewSample, read_logs
from appliance.lab.torture.runner import failover_gap, views_as_seen

N1 = """\
2026-12-02 07:49:13,414 INFO node=n1 id=1 incarnation=3 group=239.255.84.84:54461
2026-12-02 07:49:13,905 INFO node=n1 view=1 t=100.000 installed view 1 [1#3]
2026-12-02 07:49:13,905 INFO node=n1 view=1 t=100.000 role PRIMARY: founded view 1 [1#3]
2026-12-02 07:49:14,030 INFO node=n1 view=3 t=100.200 installed view 3 [1#3, 2#3, 3#3]
2026-12-02 07:49:20,000 INFO node=n1 view=5 t=110.000 role LEARNING: state from node 2
2026-12-02 07:49:20,100 INFO node=n1 view=6 t=110.100 role BACKUP: accepted into view 6
"""
N2 = """\
2026-12-02 07:49:13,929 INFO node=n2 view=2 t=100.100 role BACKUP: accepted into view 2
2026-12-02 07:49:18,000 INFO node=n2 view=3 t=105.100 role CANDIDATE: primary 1 suspected
2026-12-02 07:49:18,100 INFO node=n2 view=3 t=105.200 fence of node 1 (n1): done
2026-12-02 07:49:18,105 INFO node=n2 view=4 t=105.210 role PRIMARY: primary of view 4 [2#3, 3#3]
2026-12-02 07:49:18,100 INFO node=n2 view=4 t=106.000 fence of node 3 (n3): FAILED (timeout)
"""


def test_terms_end_when_the_node_is_fenced_or_loses_power(tmp_path: Path) -> None:
    (tmp_path / "n1.log").write_text(N1)
    (tmp_path / "n2.log").write_text(N2)
    logs = read_logs(tmp_path, ["n1", "n2", "n3"], [("n1", 105.0)], 0.0, 200.0)
    assert [(p.node, p.view, p.at, p.founding) for p in logs.promotions] == [
        ("n1", "1", 100.0, True),
        ("n2", "4", 105.21, False),
    ]
    assert [(f.by, f.target, f.at, f.ok) for f in logs.fences] == [
        ("n2", "n1", 105.2, True),
        ("n2", "n3", 106.0, False),
    ]
    n1, n2 = logs.terms
    assert (n1.node, n1.start, n1.end, n1.ended_by) == ("n1", 100.0, 105.0, "power pulled")
    assert (n2.node, n2.start, n2.end) == ("n2", 105.21, 200.0)
    # Without the power pull, the fence ends n1's term.
    logs = read_logs(tmp_path, ["n1", "n2", "n3"], [], 0.0, 200.0)
    assert (logs.terms[0].end, logs.terms[0].ended_by) == (105.2, "fenced by n2")


def _ok(process: int, t: float) -> Op:
    return Op(process, "r0", OpKind.GET, None, t - 0.001, t, Outcome.OK, None)


def test_the_failover_gap_is_the_longest_silence_on_the_nodes_not_hit() -> None:
    rec = FaultRecord(Step(1, Fault.PULL_POWER_PRIMARY, 1.0, 0.0, 0.0), targets=["n1"])
    rec.struck_at, rec.recovered_at = 10.0, 12.0
    ops = [_ok(1, 10.01), _ok(2, 10.02), _ok(2, 10.15), _ok(3, 10.16), _ok(2, 10.17)]
    ops += [_ok(1, 10.5)]  # process 1 is on n1, the node that lost power: not counted
    nodes = {1: "n1", 2: "n2", 3: "n3"}
    assert failover_gap(ops, rec, nodes) == 130.0
    rec.recovered_at = None
    assert failover_gap(ops, rec, nodes) is None


def test_views_seen_through_info() -> None:
    ids = {"n1": 1, "n2": 2}
    good = [
        ViewSample(1.0, "n1", "primary", "3", "1"),
        ViewSample(1.0, "n2", "backup", "3", "1"),
        ViewSample(2.0, "n2", "primary", "4", "2"),
    ]
    assert views_as_seen(good, ids).ok
    bad = [*good, ViewSample(2.1, "n1", "primary", "4", "1")]
    result = views_as_seen(bad, ids)
    assert not result.ok
    assert any("view 4" in p for p in result.problems)
