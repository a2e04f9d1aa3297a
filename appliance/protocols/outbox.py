"""Frames outgoing messages: fills in this node's identity and packet number, signs them."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.protocols.config import ProtocolConfig, gateway_group
from appliance.protocols.messages import Body
from appliance.protocols.wire.datagram import Datagram, encode, overhead
from appliance.protocols.wire.header import Flags, Header, MessageType, OrderRecord

# Our own replica's confirmations and commit announcements, which our own gateway needs too.
_GATEWAY_EVIDENCE = frozenset({MessageType.SECOND_ACK, MessageType.HEARTBEAT, MessageType.ORDER})


class Outbox:
    """Every datagram this node sends goes through here (all of them to the one multicast group)."""

    def __init__(
        self,
        cfg: ProtocolConfig,
        node: int,
        incarnation: int,
        local_groups: frozenset[int] = frozenset(),
    ) -> None:
        self.cfg = cfg
        self.local_groups = local_groups
        self.local: list[tuple[Datagram, Body]] = []
        """Datagrams to groups hosted on this node too: handed over in-process, not decoded."""
        self.node = node
        self.own_gateway = gateway_group(node)
        self.incarnation = incarnation
        self.packet_number = 0
        self._datagrams: list[bytes] = []
        self.sent_by_type: dict[str, int] = {}
        self.local_only = 0
        """Messages handed over in-process and never sent: to our own gateway, and our
        gateway's acknowledgements meant for our own replica alone."""
        self.requests_in_order = False
        """Our own replica is the primary and its ORDER messages carry our gateway's requests
        whole (``GroupMember.carries_own_requests``): set by the engine before every flush."""
        self.requests_withheld = 0
        """Requests of our gateway handed to our own replica only, never multicast."""

    def emit(
        self,
        body: Body,
        *,
        src_group: int,
        dst_group: int,
        conn_id: int = 0,
        view: int = 0,
        seq: int = 0,
        ack: int = 0,
        records: Sequence[OrderRecord] = (),
        flags: Flags = Flags.NONE,
        local_only: bool = False,
    ) -> bool:
        """Frame and sign one message; False if it only went to our own node, in-process.

        ``local_only``: for our own node only (a gateway's acknowledgement to its own replica).
        """
        # Our replica's replies and acks to our own gateway: nobody else listens to that group,
        # so it is handed over in-process only, never encoded, signed or sent (and takes no
        # packet number). On the node clients usually talk to (the primary's) that is one
        # datagram fewer per request for every node to wake up for, decode and authenticate.
        local_only = local_only or (
            dst_group == self.own_gateway and src_group != dst_group and not records
        )
        withheld = (
            self.requests_in_order
            and body.TYPE is MessageType.DATA
            and src_group == self.own_gateway
            and dst_group == self.cfg.service_group
        )
        if withheld:
            # Our gateway's requests while our own replica orders them: the ORDER that orders
            # them carries them whole, so the backups would only get them twice. One datagram
            # fewer per request for the primary to send and every backup to wake up for. (If
            # this node dies before ordering them, its gateway's clients die with it.)
            local_only = True
            self.requests_withheld += 1
        if not local_only:
            self.packet_number += 1
        header = Header(
            msg_type=body.TYPE,
            cluster_id=self.cfg.cluster_id,
            src_node=self.node,
            incarnation=self.incarnation,
            packet_number=self.packet_number,
            src_group=src_group,
            dst_group=dst_group,
            conn_id=conn_id,
            view=view,
            seq=seq,
            ack=ack,
            flags=flags,
        )
        if local_only:
            self.local.append((Datagram(header), body))
            if not withheld:
                self.local_only += 1
            return False
        d = Datagram(header, tuple(records), body.encode())
        data = encode(d, self.cfg.key)
        if len(data) > self.cfg.max_datagram:
            # A sizing bug here would be a silent, endless loss at every receiver: fail loudly.
            raise ValueError(
                f"{body.TYPE.name} datagram of {len(data)} bytes exceeds max_datagram "
                f"{self.cfg.max_datagram}"
            )
        self._datagrams.append(data)
        if dst_group in self.local_groups and (
            src_group != dst_group or body.TYPE in _GATEWAY_EVIDENCE
        ):
            self.local.append((d, body))
        name = body.TYPE.name.lower()
        self.sent_by_type[name] = self.sent_by_type.get(name, 0) + 1
        return True

    def records_room(self, body_len: int) -> int:
        """How many ordering records still fit beside a body of ``body_len`` bytes."""
        free = self.cfg.max_datagram - overhead(0) - body_len
        return max(0, free // (overhead(1) - overhead(0)))

    def take(self) -> list[bytes]:
        out, self._datagrams = self._datagrams, []
        return out

    def __len__(self) -> int:
        return len(self._datagrams)
