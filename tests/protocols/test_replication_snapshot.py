"""A joiner's snapshot from the replication layer: stepped where the app can, else at once."""

from __future__ import annotations

from appliance.protocols.config import ProtocolConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import Delivered, StateReset
from appliance.protocols.messages import Role
from appliance.protocols.replication import (
    HELD_PER_STEP,
    Determinism,
    Replicator,
    Style,
    encode_update,
)
from appliance.protocols.steps import Steps
from appliance.service.app import KVApplication
from tests.steps import run_steps


class _Counter:
    """An application without ``snapshot_steps``: its snapshot is taken in one call."""

    def __init__(self, det: Determinism) -> None:
        self.value = 0

    def execute(self, request: bytes) -> tuple[bytes, bytes]:
        self.value += 1
        return b"ok", b""

    def apply_effects(self, effects: bytes) -> None:
        self.value += 1

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        self.value = int(data)

    def digest(self) -> bytes:
        return self.snapshot()


def _replicator(make_app: object) -> Replicator:
    engine = NodeEngine(
        ProtocolConfig(cluster_id=1, nodes=(1, 2), key=b"k" * 32, annexed=True), 1, 1, 0.0
    )
    return Replicator(engine, make_app, Style.SEMI_ACTIVE, lambda: 0, bytes)  # type: ignore[arg-type]


def test_an_application_without_steps_is_snapshotted_when_asked_and_finishes_at_once() -> None:
    r = _replicator(_Counter)
    app = r.app
    assert isinstance(app, _Counter)
    app.value = 41
    steps = r.snapshot_steps()
    app.value = 99  # changed after the request: the snapshot is of the state when asked
    assert run_steps(steps) == ((b"41",), 0)


def test_the_kv_service_is_snapshotted_in_steps_to_the_same_bytes() -> None:
    r = _replicator(KVApplication)
    app = r.app
    assert isinstance(app, KVApplication)
    for i in range(10_000):
        app.store._data[b"key:%d" % i] = b"v"
    parts, count = run_steps(r.snapshot_steps())
    assert b"".join(parts) == r.snapshot()
    assert count > 2  # sorted, merged and encoded a slice at a time


class _SteppedCounter(_Counter):
    """A counter whose restore takes three steps, applying effects as a log of values."""

    def __init__(self, det: Determinism) -> None:
        super().__init__(det)
        self.applied: list[int] = []

    def apply_effects(self, effects: bytes) -> None:
        self.value += int(effects)
        self.applied.append(int(effects))

    def restore_steps(self, data: bytes) -> Steps[None]:
        for _ in range(3):
            yield
        self.value = int(data)


def _update(index: int, amount: int) -> Delivered:
    """Input ``index`` as a semi-passive backup gets it: the primary's state update."""
    return Delivered(index, 0, 0, index, b"add", encode_update(b"%d" % amount, b"ok"))


def _passive(make_app: object) -> Replicator:
    r = _replicator(make_app)
    r.style = Style.SEMI_PASSIVE
    return r


def test_inputs_delivered_during_a_stepped_restore_are_applied_after_it_in_order() -> None:
    r = _passive(_SteppedCounter)
    r.begin_restore(b"100")
    r.handle(_update(1, 1), 0.0)
    assert not r.restore_step(0.0)
    r.handle(_update(2, 10), 0.0)
    steps = 1
    while not r.restore_step(0.0):
        steps += 1
    app = r.app
    assert isinstance(app, _SteppedCounter)
    assert steps == 4 and not r.restoring  # three of the app's, one for the held inputs
    assert app.value == 111 and app.applied == [1, 10]  # on the restored state, in order
    r.handle(_update(3, 1000), 0.0)  # and later ones at once
    assert app.value == 1111


def test_an_application_without_restore_steps_is_restored_at_the_first_step() -> None:
    r = _passive(_Counter)
    r.begin_restore(b"7")
    r.handle(_update(1, 1), 0.0)
    assert not r.restore_step(0.0)  # restored, and the held input applied
    app = r.app
    assert isinstance(app, _Counter) and app.value == 8
    assert r.restore_step(0.0) and r.held_last == 1


def test_many_held_inputs_are_applied_a_bounded_batch_per_step() -> None:
    r = _passive(_Counter)
    r.begin_restore(b"0")
    n = 3 * HELD_PER_STEP + 1
    for i in range(1, n + 1):
        r.handle(_update(i, 1), 0.0)
    steps = 0
    while not r.restore_step(0.0):
        steps += 1
        app = r.app
        assert isinstance(app, _Counter) and app.value <= steps * HELD_PER_STEP
    assert steps == 4 and r.held_last == n


def test_a_reset_abandons_the_restore_and_what_it_held() -> None:
    r = _passive(_SteppedCounter)
    r.begin_restore(b"100")
    r.handle(_update(1, 1), 0.0)
    r.handle(StateReset("rejoin"), 0.0)
    assert not r.restoring and r.restore_step(0.0)
    app = r.app
    assert isinstance(app, _SteppedCounter) and app.value == 0 and app.applied == []


def test_a_snapshot_or_digest_asked_during_a_restore_is_of_the_restored_state() -> None:
    r = _passive(_SteppedCounter)
    r.begin_restore(b"5")
    r.handle(_update(1, 2), 0.0)
    assert r.digest() == b"7" and not r.restoring
    r.begin_restore(b"40")
    assert run_steps(r.snapshot_steps())[0] == (b"40",)


def test_a_snapshot_the_application_refuses_makes_the_replica_leave() -> None:
    r = _replicator(KVApplication)
    r.engine.member.role = Role.BACKUP
    r.begin_restore(b"\x09not a snapshot")
    r.handle(_update(1, 1), 0.0)
    while not r.restore_step(0.0):
        pass
    assert not r.restoring
    assert r.app.digest() == KVApplication(r.det).digest()  # an empty store, nothing applied
    assert any(isinstance(e, StateReset) for e in r.engine.member.events)
