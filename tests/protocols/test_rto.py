"""Tests for the RFC 6298 style RTT estimator used by LLMP retransmission."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protocols.llmp.rto import CLOCK_GRANULARITY, RttEstimator


def test_defaults_are_lan_scale() -> None:
    est = RttEstimator()
    assert est.srtt is None
    assert est.rttvar is None
    assert est.rto == pytest.approx(0.05)
    assert est.backoff == 1


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    est = RttEstimator(min_rto=0.0001)
    est.on_sample(0.010)
    assert est.srtt == pytest.approx(0.010)
    assert est.rttvar == pytest.approx(0.005)
    # srtt + 4 * rttvar
    assert est.rto == pytest.approx(0.030)


def test_subsequent_samples_follow_rfc6298_gains() -> None:
    est = RttEstimator(min_rto=0.0001)
    est.on_sample(0.010)
    est.on_sample(0.002)
    # rttvar uses the old srtt: 3/4 * 0.005 + 1/4 * |0.010 - 0.002|
    assert est.rttvar == pytest.approx(0.75 * 0.005 + 0.25 * 0.008)
    assert est.srtt == pytest.approx(0.875 * 0.010 + 0.125 * 0.002)
    assert est.rto == pytest.approx(est.srtt + 4 * est.rttvar)  # type: ignore[operator]


def test_clock_granularity_floor_when_variance_vanishes() -> None:
    est = RttEstimator(min_rto=0.0001)
    for _ in range(200):
        est.on_sample(0.0005)
    assert est.rttvar is not None and 4 * est.rttvar < CLOCK_GRANULARITY
    assert est.rto == pytest.approx(0.0005 + CLOCK_GRANULARITY)


def test_rto_clamped_to_min() -> None:
    est = RttEstimator(min_rto=0.005)
    for _ in range(50):
        est.on_sample(0.0003)
    assert est.rto == pytest.approx(0.005)


def test_rto_clamped_to_max() -> None:
    est = RttEstimator(max_rto=2.0)
    est.on_sample(5.0)
    assert est.rto == pytest.approx(2.0)


def test_initial_rto_is_clamped() -> None:
    assert RttEstimator(initial_rto=10.0, max_rto=1.0).rto == pytest.approx(1.0)
    assert RttEstimator(initial_rto=0.001, min_rto=0.005).rto == pytest.approx(0.005)


def test_timeout_doubles_rto() -> None:
    est = RttEstimator(initial_rto=0.05, max_rto=2.0)
    est.on_timeout()
    assert est.rto == pytest.approx(0.1)
    est.on_timeout()
    assert est.rto == pytest.approx(0.2)
    assert est.backoff == 4


def test_backoff_applies_after_min_clamp() -> None:
    """The floor applies before backing off, so the first retransmission waits 2 * min_rto."""
    est = RttEstimator(min_rto=0.005)
    for _ in range(50):
        est.on_sample(0.0003)
    est.on_timeout()
    assert est.rto == pytest.approx(0.010)


def test_backoff_capped_at_max_rto_and_multiplier_stops_growing() -> None:
    est = RttEstimator(initial_rto=0.05, max_rto=2.0)
    for _ in range(1000):
        est.on_timeout()
    assert est.rto == pytest.approx(2.0)
    # 0.05 * 64 = 3.2 >= 2.0: the multiplier stops at the first value that reaches the cap.
    assert est.backoff == 64


def test_sample_resets_backoff() -> None:
    est = RttEstimator(min_rto=0.0001)
    est.on_sample(0.001)
    base = est.rto
    est.on_timeout()
    est.on_timeout()
    assert est.rto == pytest.approx(4 * base)
    est.on_sample(0.001)
    assert est.backoff == 1
    assert est.rto < 2 * base


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_bad_samples_rejected_without_changing_state(bad: float) -> None:
    est = RttEstimator()
    est.on_sample(0.001)
    before = (est.srtt, est.rttvar, est.rto)
    with pytest.raises(ValueError):
        est.on_sample(bad)
    assert (est.srtt, est.rttvar, est.rto) == before


def test_zero_sample_allowed() -> None:
    est = RttEstimator()
    est.on_sample(0.0)
    assert est.srtt == 0.0
    assert est.rto == pytest.approx(0.005)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_rto": 0.0},
        {"min_rto": 0.0},
        {"max_rto": -1.0},
        {"min_rto": 3.0, "max_rto": 2.0},
        {"max_rto": math.inf},
        {"initial_rto": math.nan},
    ],
)
def test_invalid_configuration_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RttEstimator(**kwargs)


@given(
    events=st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
            st.none(),  # None = a timeout
        ),
        max_size=60,
    ),
    min_rto=st.floats(min_value=1e-4, max_value=0.1),
    span=st.floats(min_value=1.0, max_value=100.0),
)
def test_rto_always_within_bounds(events: list[float | None], min_rto: float, span: float) -> None:
    max_rto = min_rto * span
    est = RttEstimator(min_rto=min_rto, max_rto=max_rto)
    for event in events:
        previous = est.rto
        if event is None:
            est.on_timeout()
            # Backoff never shrinks the timeout, and it grows unless already at the cap.
            assert est.rto >= previous
            assert est.rto == max_rto or est.rto == pytest.approx(2 * previous)
        else:
            est.on_sample(event)
            assert est.backoff == 1
        assert min_rto <= est.rto <= max_rto
