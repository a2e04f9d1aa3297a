from __future__ import annotations

import pickle
import re

import pytest

from appliance.protocols.wire import RejectReason, WireError


def test_str_attributes_and_base_class() -> None:
    err = WireError(RejectReason.BAD_HMAC, "authentication failed")
    assert err.reason is RejectReason.BAD_HMAC
    assert err.detail == "authentication failed"
    assert str(err) == "bad_hmac: authentication failed"
    assert isinstance(err, ValueError)
    assert "BAD_HMAC" in repr(err)


def test_pickles_for_logs_and_multiprocessing() -> None:
    err = pickle.loads(pickle.dumps(WireError(RejectReason.STALE, "x")))
    assert (err.reason, err.detail) == (RejectReason.STALE, "x")


@pytest.mark.parametrize("reason", list(RejectReason))
def test_reason_values_are_counter_names(reason: RejectReason) -> None:
    assert re.fullmatch(r"[a-z][a-z_]*", reason.value)
    assert reason.value == reason.name.lower()


def test_reason_set_is_the_documented_one() -> None:
    assert {r.value for r in RejectReason} == {
        "oversize",
        "truncated",
        "bad_version",
        "wrong_cluster",
        "bad_hmac",
        "replayed",
        "stale",
        "malformed",
        "unknown_type",
    }
