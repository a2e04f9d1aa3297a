"""Wire format: how every LLFT datagram is framed, authenticated and checked for freshness.

Sans-I/O like the rest of :mod:`appliance.protocols`: bytes in, typed values out. The one
exception decoding can raise is :class:`WireError`; :class:`DatagramFilter` turns even that into
counters. The byte layout is documented in ``docs/wire-format.md``.
"""

from appliance.protocols.wire.datagram import (
    DEFAULT_MAX_DATAGRAM,
    HMAC_LEN,
    Datagram,
    decode,
    encode,
    overhead,
)
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer
from appliance.protocols.wire.header import (
    PROTOCOL_VERSION,
    Flags,
    Header,
    MessageType,
    OrderRecord,
)
from appliance.protocols.wire.inbound import DatagramFilter
from appliance.protocols.wire.replay import ReplayGuard

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "HMAC_LEN",
    "PROTOCOL_VERSION",
    "Datagram",
    "DatagramFilter",
    "Flags",
    "Header",
    "MessageType",
    "OrderRecord",
    "Reader",
    "RejectReason",
    "ReplayGuard",
    "WireError",
    "Writer",
    "decode",
    "encode",
    "overhead",
]
