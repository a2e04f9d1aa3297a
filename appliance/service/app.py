"""The KV service as a replicated application: RESP requests in, RESP replies out."""

from __future__ import annotations

from collections.abc import Callable

from appliance.protocols.replication import Determinism
from appliance.service.kv import KVStore
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

    def restore(self, data: bytes) -> None:
        self.store = KVStore.restore(data, self.det, self.info)

    def digest(self) -> bytes:
        return self.store.digest()
