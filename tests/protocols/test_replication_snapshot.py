"""A joiner's snapshot from the replication layer: stepped where the app can, else at once."""

from __future__ import annotations

from appliance.protocols.config import ProtocolConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.replication import Determinism, Replicator, Style
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
