"""Protocol parameters: timing, windows and sizes.

Defaults are LAN-scale: a Pi LAN round trip is 0.2-1 ms with multi-millisecond outliers, so
heartbeats every 20 ms and suspicion after 150 ms of silence detect a dead primary well under a
second while tolerating several consecutive lost heartbeats.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from appliance.protocols.wire.datagram import DEFAULT_MAX_DATAGRAM, overhead

SERVICE_GROUP = 1
GATEWAY_GROUP_BASE = 0x8000


def gateway_group(node: int) -> int:
    """Virtual port of node ``node``'s client gateway (a group of one)."""
    return GATEWAY_GROUP_BASE | node


def is_gateway_group(group: int) -> bool:
    return group & GATEWAY_GROUP_BASE != 0


class StateTransfer(enum.Enum):
    """How the primary ships a snapshot to a joiner."""

    STREAM = "stream"
    """The primary multicasts a small ``STATE_OFFER`` (size and digest) and hands the blob to
    its host; the joiner's host fetches it point-to-point and gives it back with
    ``install_state``. A large state then never holds up the group's multicast traffic. This
    is what the node agent uses (over TCP) and what the simulator exercises."""
    MULTICAST = "multicast"
    """The core cuts the snapshot into ``state_chunk``-byte ``STATE`` datagrams itself: needs
    nothing from the host, so any host (a test, an embedding) can join nodes as is."""


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    cluster_id: int
    nodes: tuple[int, ...]
    key: bytes = field(repr=False)
    service_group: int = SERVICE_GROUP
    heartbeat_interval: float = 0.02
    silence_timeout: float = 0.15
    flat_wire_timeout: float = 0.05
    rank_delay: float = 0.05
    """Extra wait per rank below the primary before a backup fences, so the primary's fence
    lands first (no fence race); must exceed the fence device's latency. Skipped when the
    heartbeat wire proves the node above is down."""
    ack_delay: float = 0.001
    nack_delay: float = 0.002
    initial_rto: float = 0.02
    min_rto: float = 0.003
    max_rto: float = 0.5
    window: int = 256
    """Unacknowledged messages a sender may have in flight per virtual connection."""
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    batch_bytes: int = 1400
    max_log: int = 4096
    """Ordered-log entries above the commit point; beyond it the primary stops ordering."""
    lag_timeout: float = 1.0
    """A backup that is behind and has not advanced for this long is a timing fault: fenced
    (it then rejoins by state transfer, which keeps the log bounded)."""
    join_retry: float = 0.1
    found_timeout: float = 0.5
    """Quiet period before a new group is founded: only when every configured node is heard
    without a view, and then by the lowest id (no startup fencing: state is in memory)."""
    proposal_retry: float = 0.03
    vote_timeout: float = 0.3
    fence_retry: float = 0.1
    state_chunk: int = 1024
    """Chunk size of the multicast state transfer."""
    state_transfer: StateTransfer = StateTransfer.MULTICAST
    """Core default: the transfer that needs no host channel (the agent chooses ``STREAM``)."""
    join_timeout: float = 5.0
    handover_timeout: float = 1.0
    """A graceful hand-over (``step_down``) that has not completed after this long gives up:
    the primary resumes ordering, or, once it voted for its successor, takes over again."""
    host_confirms_restore: bool = False
    """The host loads an installed snapshot in steps and says when it is done
    (``NodeEngine.restored``): until then the joiner does not report the snapshot installed,
    so the primary neither counts on it nor admits it (a member must be able to act on every
    input it acknowledged, and lead). Without it the load is taken to be done at once."""
    annexed: bool = False
    """Every input carries an annex the primary's host attaches after executing it (VDF
    records for semi-active replication, the state update for semi-passive); backups deliver
    an input only with its annex."""

    @property
    def max_payload(self) -> int:
        """Largest application message that fits one datagram on every path (DATA, and ORDER
        repair of a log entry): larger ones must be split by the application."""
        order_repair = 8 + 4 + 26 + 4  # commit, entry count, one entry's framing, annex count
        data = 4 + 20 + 4 + 2 + 2 * len(self.nodes)  # count, seq+after, length, required backups
        return self.max_datagram - overhead(0) - max(order_repair, data)

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("nodes: at least one node is required")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"nodes: duplicate node ids in {self.nodes}")
        for n in self.nodes:
            if not 1 <= n < GATEWAY_GROUP_BASE:
                raise ValueError(f"nodes: node id {n} must be in 1..{GATEWAY_GROUP_BASE - 1}")
        if self.silence_timeout <= 2 * self.heartbeat_interval:
            raise ValueError(
                "silence_timeout must exceed two heartbeat intervals "
                f"(got {self.silence_timeout} <= 2 x {self.heartbeat_interval})"
            )
        if self.batch_bytes > self.max_datagram:
            raise ValueError(f"batch_bytes {self.batch_bytes} exceeds max_datagram")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.max_payload < 64:
            raise ValueError(f"max_datagram {self.max_datagram} leaves no room for messages")


def check_payload(cfg: ProtocolConfig, payload: bytes) -> None:
    """Refuse a message that could never be delivered (nor repaired) rather than retry it."""
    if len(payload) > cfg.max_payload:
        raise ValueError(
            f"message of {len(payload)} bytes exceeds max_payload {cfg.max_payload} "
            f"(max_datagram {cfg.max_datagram})"
        )
