"""Retransmission timeout (RTO) estimation for LLMP's sent list.

LLMP retransmits a message that is not acknowledged in time. Retransmitting too early wastes
the LAN and the receivers' CPU; too late, and a single lost datagram stalls every write behind
it, which clients see directly as latency. So the timeout tracks the measured round trip,
following RFC 6298 (Jacobson/Karels): a smoothed RTT plus four times its mean deviation, with
exponential backoff while retransmissions keep timing out.

Two deliberate departures from RFC 6298, both because this runs on one LAN and not the Internet:

* The RFC's 1 s minimum RTO is replaced by ``min_rto`` (5 ms by default; the protocol
  configures 3 ms). A Pi LAN round trip is 0.2-1 ms, and failover is promised "well under a
  second"; a 1 s floor would make a single lost datagram cost more than a whole failover.
* The initial RTO (before any sample) is 50 ms by default (20 ms as the protocol configures
  it) rather than 1 s, for the same reason.

Karn's rule is the caller's job: feed :meth:`RttEstimator.on_sample` only round trips of
messages that were never retransmitted, since the ack of a retransmitted message cannot be
matched to the transmission it answers.
"""

from __future__ import annotations

import math

#: Clock granularity G of RFC 6298, in seconds. It keeps the RTO strictly above the smoothed
#: RTT even when the variance has decayed to nothing (a perfectly steady link), so that a tiny
#: amount of jitter does not cause spurious retransmissions.
CLOCK_GRANULARITY = 0.001

_ALPHA = 1.0 / 8.0  # RFC 6298 gain for the smoothed RTT
_BETA = 1.0 / 4.0  # RFC 6298 gain for the RTT variance
_K = 4.0  # RFC 6298 variance multiplier


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


class RttEstimator:
    """RFC 6298 style smoothed RTT + variance; retransmission timeout with exponential backoff.

    One estimator per destination (or per virtual connection): round trips to different peers
    are not samples of the same quantity. The estimator is pure state: the caller measures the
    round trip with its own clock and passes the elapsed seconds in.
    """

    __slots__ = ("_backoff", "_initial_rto", "_max_rto", "_min_rto", "_rto", "_rttvar", "_srtt")

    def __init__(
        self, initial_rto: float = 0.05, min_rto: float = 0.005, max_rto: float = 2.0
    ) -> None:
        """Create an estimator with no samples yet.

        ``initial_rto`` is used until the first sample arrives (clamped into
        ``[min_rto, max_rto]`` like every other RTO). ``max_rto`` bounds the backoff so a peer
        that comes back after a long outage is probed again within a bounded time.
        """
        for name, value in (
            ("initial_rto", initial_rto),
            ("min_rto", min_rto),
            ("max_rto", max_rto),
        ):
            _check_finite(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if min_rto > max_rto:
            raise ValueError(f"min_rto ({min_rto}) must not exceed max_rto ({max_rto})")
        self._initial_rto = initial_rto
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._srtt: float | None = None
        self._rttvar: float | None = None
        self._backoff = 1
        self._rto = self._compute_rto()

    def _compute_rto(self) -> float:
        return min(self._max_rto, self._base_rto() * self._backoff)

    def on_sample(self, rtt: float) -> None:
        """Fold in one measured round trip (seconds) and reset the backoff.

        A fresh sample proves the path works again, so the doubled timeouts accumulated while
        it did not are dropped (RFC 6298 section 5, note after 5.7). Negative or non-finite
        samples are rejected rather than absorbed: one bogus value would skew the smoothed RTT
        for dozens of samples.
        """
        _check_finite("rtt", rtt)
        if rtt < 0:
            raise ValueError(f"rtt must not be negative, got {rtt!r}")
        if self._srtt is None or self._rttvar is None:
            # RFC 6298 (2.2): first measurement.
            self._srtt = rtt
            self._rttvar = rtt / 2.0
        else:
            # RFC 6298 (2.3): update the variance with the *old* srtt, then srtt.
            self._rttvar = (1.0 - _BETA) * self._rttvar + _BETA * abs(self._srtt - rtt)
            self._srtt = (1.0 - _ALPHA) * self._srtt + _ALPHA * rtt
        self._backoff = 1
        self._rto = self._compute_rto()

    def on_timeout(self) -> None:
        """Record that a retransmission timer expired: double the RTO (RFC 6298 5.5).

        The multiplier stops doubling once the RTO has reached ``max_rto``; otherwise a long
        outage would grow it without bound, and a later :attr:`rto` would still be pinned at
        ``max_rto`` but the multiplier would carry meaningless history.
        """
        if self._rto < self._max_rto:  # the RTO is min(max_rto, base * backoff)
            self._backoff *= 2
            self._rto = self._compute_rto()

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, within ``[min_rto, max_rto]``."""
        return self._rto  # read on every flush of every connection: kept, not recomputed

    @property
    def srtt(self) -> float | None:
        """Smoothed round-trip time, or None before the first sample."""
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        """Round-trip time variation (mean deviation), or None before the first sample."""
        return self._rttvar

    @property
    def backoff(self) -> int:
        """Current backoff multiplier (1 when no timeout happened since the last sample)."""
        return self._backoff

    def _base_rto(self) -> float:
        """The un-backed-off RTO: srtt + max(G, K * rttvar), clamped to the configured range."""
        if self._srtt is None or self._rttvar is None:
            raw = self._initial_rto
        else:
            raw = self._srtt + max(CLOCK_GRANULARITY, _K * self._rttvar)
        return min(self._max_rto, max(self._min_rto, raw))
