"""The single error type that wire decoding is allowed to raise.

Every byte that reaches a node from the network is untrusted. A node must drop a bad datagram,
count why, and carry on; it must never crash on one. Funnelling every failure into one typed
exception with a small closed set of reasons makes that easy to get right (callers catch exactly
one thing) and easy to operate (each reason is a counter an operator can read).
"""

from __future__ import annotations

import enum

__all__ = ["RejectReason", "WireError"]


class RejectReason(enum.Enum):
    """Why a datagram was dropped.

    The value is a short snake_case string so it can be used directly as a counter or metric
    name (``wire_rejected{reason="bad_hmac"}``) without a translation table that could drift.
    """

    OVERSIZE = "oversize"
    """Longer than the configured maximum datagram size."""
    TRUNCATED = "truncated"
    """Shorter than the fixed header, or shorter than its own length fields say."""
    BAD_VERSION = "bad_version"
    """Sent by a node speaking another protocol version (a mixed-version cluster)."""
    WRONG_CLUSTER = "wrong_cluster"
    """Authenticated with our key but addressed to another cluster id (a shared-key mistake)."""
    BAD_HMAC = "bad_hmac"
    """Failed authentication: corrupted, forged, or from a cluster with a different key."""
    REPLAYED = "replayed"
    """A packet number already seen, or too old for the replay window (duplicate or replay)."""
    STALE = "stale"
    """From an older incarnation of a node whose newer incarnation we have already heard."""
    MALFORMED = "malformed"
    """Authenticated but structurally invalid: trailing bytes, bad utf-8, absurd counts, flags."""
    UNKNOWN_TYPE = "unknown_type"
    """Authenticated, right version, but a message type this build does not know."""


class WireError(ValueError):
    """Raised for every malformed, unauthenticated or unacceptable datagram or field.

    It subclasses :class:`ValueError` because bad input *is* a bad value, but callers on the
    receive path should catch :class:`WireError` specifically: a bare ``ValueError`` from the
    encoders means a programming error (an out-of-range field we tried to send), which must not
    be silently counted as network noise.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"

    def __repr__(self) -> str:
        return f"WireError({self.reason!s}, {self.detail!r})"
