"""The history clients record: validation, thread-safe recording, JSON lines, keys."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from appliance.lab.torture.history import History, Op, OpKind, Outcome
from tests.faults.histories import get, incr, set_


def test_ops_reject_what_a_client_cannot_have_seen() -> None:
    with pytest.raises(ValueError, match="SET needs a string value"):
        Op(1, "k", OpKind.SET, None, 0.0, 1.0, Outcome.OK)
    with pytest.raises(ValueError, match="GET takes no value"):
        Op(1, "k", OpKind.GET, "x", 0.0, 1.0, Outcome.OK, None)
    with pytest.raises(ValueError, match="INCR returns an integer"):
        Op(1, "k", OpKind.INCR, None, 0.0, 1.0, Outcome.OK, "3")
    with pytest.raises(ValueError, match="GET reads a string or None"):
        Op(1, "k", OpKind.GET, None, 0.0, 1.0, Outcome.OK, 3)
    with pytest.raises(ValueError, match="an UNKNOWN op has no result"):
        Op(1, "k", OpKind.INCR, None, 0.0, None, Outcome.UNKNOWN, 4)
    with pytest.raises(ValueError, match="an OK op needs a completion time"):
        Op(1, "k", OpKind.GET, None, 0.0, None, Outcome.OK)
    with pytest.raises(ValueError, match="not before invoke"):
        Op(1, "k", OpKind.GET, None, 2.0, 1.0, Outcome.OK)
    with pytest.raises(ValueError, match="must be finite"):
        Op(1, "k", OpKind.GET, None, float("nan"), 1.0, Outcome.OK)


def test_invoke_and_finish_record_times_and_pending_ops_end_unknown() -> None:
    ticks = itertools.count(10)
    history = History(clock=lambda: float(next(ticks)))
    a = history.invoke(1, "k", OpKind.SET, "v")
    b = history.invoke(2, "k", OpKind.INCR)
    done = history.finish(a, Outcome.OK)
    assert (done.invoke, done.complete, done.outcome) == (10.0, 12.0, Outcome.OK)
    assert len(history) == 2
    ops = history.ops()
    assert ops[0] == done
    assert ops[1] == Op(2, "k", OpKind.INCR, None, 11.0, None, Outcome.UNKNOWN)
    history.finish(b, Outcome.OK, 1)
    with pytest.raises(ValueError, match="finished twice"):
        history.finish(b, Outcome.OK, 1)


def test_threads_record_every_op_once() -> None:
    history = History()
    per_thread = 500

    def client(process: int) -> None:
        for i in range(per_thread):
            pending = history.invoke(process, f"k{i % 3}", OpKind.SET, f"{process}:{i}")
            history.finish(pending, Outcome.OK)

    threads = [threading.Thread(target=client, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ops = history.ops()
    assert len(ops) == 8 * per_thread
    assert len({op.value for op in ops}) == len(ops)
    keys = history.by_key()
    assert sorted(keys) == ["k0", "k1", "k2"]
    assert sum(map(len, keys.values())) == len(ops)
    for key, key_ops in keys.items():
        assert {op.key for op in key_ops} == {key}
        assert [op.invoke for op in key_ops] == sorted(op.invoke for op in key_ops)


def test_json_lines_round_trip(tmp_path: Path) -> None:
    history = History(
        [
            set_(1, 0.5, 1.25, "a"),
            get(2, 0.75, 1.5, None),
            get(2, 1.6, 1.7, "a", key="other"),
            incr(3, 2.0, None, None, Outcome.UNKNOWN),
            incr(3, 2.5, 3.0, 7),
            set_(4, 3.0, 3.1, "b", Outcome.FAIL),
        ]
    )
    history.invoke(5, "k", OpKind.GET)  # still pending: saved as unknown
    text = history.to_jsonl()
    assert len(text.splitlines()) == 7
    assert History.from_jsonl(text).ops() == history.ops()
    path = tmp_path / "history.jsonl"
    history.save(path)
    assert History.load(path).ops() == history.ops()


def test_bad_json_lines_name_the_line() -> None:
    good = json.dumps(set_(1, 0.0, 1.0, "a").to_json())
    with pytest.raises(ValueError, match=r"history line 2: .*Expecting value"):
        History.from_jsonl(good + "\nnot json\n")
    bad_kind = good.replace('"set"', '"del"')
    with pytest.raises(ValueError, match="history line 1: bad op kind"):
        History.from_jsonl(bad_kind)
    with pytest.raises(ValueError, match=r"missing \['result'\]"):
        History.from_jsonl(json.dumps({k: v for k, v in json.loads(good).items() if k != "result"}))
    with pytest.raises(ValueError, match=r"history line 1: .*SET needs a string value"):
        History.from_jsonl(good.replace('"value": "a"', '"value": null'))
