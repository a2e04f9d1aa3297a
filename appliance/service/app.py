"""The KV service as a replicated application: RESP requests in, RESP replies out."""

from __future__ import annotations

from collections.abc import Callable

from appliance.protocols.engine import NodeEngine
from appliance.protocols.messages import Role
from appliance.protocols.replication import Determinism
from appliance.protocols.steps import Steps
from appliance.service.kv import KVStore, SnapshotSteps
from appliance.service.resp import Error, ProtocolError, RequestParser, encode


class KVApplication:
    """Adapts :class:`KVStore` to the replication layer's ``Application`` protocol.

    A request is one RESP-encoded command (what the gateway forwards); the reply is the
    RESP-encoded answer, exactly what the client will read.
    """

    def __init__(self, det: Determinism, info: Callable[[], dict[str, str]] | None = None) -> None:
        self.det = det
        self.info = info
        self.store = KVStore(det, info)

    def execute(self, request: bytes) -> tuple[bytes, bytes]:
        parser = RequestParser()
        parser.feed(request)
        try:
            argv = parser.next_command()
        except ProtocolError as e:
            return encode(Error(f"ERR Protocol error: {e}")), b""
        if argv is None:
            return encode(Error("ERR Protocol error: incomplete request")), b""
        outcome = self.store.execute(argv)
        return encode(outcome.reply), outcome.effects

    def apply_effects(self, effects: bytes) -> None:
        if effects:
            self.store.apply_effects(effects)

    def snapshot(self) -> bytes:
        return self.store.snapshot()

    def snapshot_steps(self) -> SnapshotSteps:
        """The snapshot of now, serialised in bounded steps (see KVStore.snapshot_steps)."""
        return self.store.snapshot_steps()

    def restore(self, data: bytes) -> None:
        self.store = KVStore.restore(data, self.det, self.info)

    def restore_steps(self, data: bytes) -> Steps[None]:
        """:meth:`restore` in bounded steps (see KVStore.restore_steps); the store is
        replaced at the last one."""
        self.store = yield from KVStore.restore_steps(data, self.det, self.info)

    def digest(self) -> bytes:
        return self.store.digest()


def replication_info(engine: NodeEngine) -> Callable[[], dict[str, str]]:
    """The fields of INFO's ``# Replication`` section, read from this node's protocol engine.

    ``role`` uses Redis' words (master/slave) so existing tools understand it; the LLFT terms
    follow. On a primary the section describes the view; ``replication_lag`` is how many
    inputs this node has delivered beyond the commit point (its tail not yet on every member).
    """

    def info() -> dict[str, str]:
        m = engine.member
        view = m.view
        role = m.role
        fields = {
            "role": "master" if role is Role.PRIMARY else "slave",
            "llft_role": role.name.lower(),
            "node": str(engine.node),
            "incarnation": str(engine.incarnation),
            "view": str(view.number) if view is not None else "none",
            "rank": str(view.rank(engine.node) or "none") if view is not None else "none",
            "primary": str(view.primary.node) if view is not None else "none",
            "members": ",".join(str(n) for n in view.nodes) if view is not None else "",
            "delivered_index": str(m.delivered),
            "commit_index": str(m.commit),
            "replication_lag": str(m.delivered - m.commit),
        }
        if view is not None and role is Role.PRIMARY:
            for i, b in enumerate(view.backups):
                fields[f"slave{i}"] = f"node={b.node},rank={i + 2},acked={m.acks.get(b.node, 0)}"
        return fields

    return info
