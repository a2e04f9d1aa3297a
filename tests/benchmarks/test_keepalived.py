"""The keepalived VIP failover phase: its configuration, and one real trial when root.

The real trial builds the two-namespace testbed with VRRPv3 100 ms adverts (a few seconds in
all) and runs only where the phase itself would run: as root with keepalived and redis-server
installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import keepalived
from benchmarks.keepalived import AGGRESSIVE, DEFAULT, render_config

ADDRESSES = {"a": "10.213.7.2", "b": "10.213.7.3"}


def test_config_makes_a_the_preferred_master_and_adverts_unicast_to_the_peer() -> None:
    a = render_config(DEFAULT, "a", "eth9", ADDRESSES, "10.213.7.100")
    b = render_config(DEFAULT, "b", "eth9", ADDRESSES, "10.213.7.100")
    assert "state MASTER" in a and "priority 150" in a
    assert "state BACKUP" in b and "priority 100" in b
    assert "unicast_src_ip 10.213.7.2\n" in a and "        10.213.7.3\n" in a
    assert "unicast_src_ip 10.213.7.3\n" in b and "        10.213.7.2\n" in b
    for conf in (a, b):
        assert "10.213.7.100/24 dev eth9" in conf
        assert "vrrp_strict" not in conf  # it would add firewall rules and refuse unicast
        assert conf.count("{") == conf.count("}")


def test_sub_second_adverts_use_vrrp_version_3() -> None:
    assert "vrrp_version 2" in render_config(DEFAULT, "a", "e", ADDRESSES, "10.213.7.100")
    fast = render_config(AGGRESSIVE, "a", "e", ADDRESSES, "10.213.7.100")
    assert "vrrp_version 3" in fast and "advert_int 0.1\n" in fast


def test_master_down_interval_is_three_adverts_and_the_skew() -> None:
    # keepalived.conf(5): with advert_int 1 and priority 128 the backup waits about 3.5 s
    assert DEFAULT.master_down_s(128) == pytest.approx(3.5)
    assert DEFAULT.master_down_s(100) == pytest.approx(3.609, abs=1e-3)
    assert AGGRESSIVE.master_down_s(100) == pytest.approx(0.361, abs=1e-3)


@pytest.mark.skipif(keepalived.skip_reason() is not None, reason=str(keepalived.skip_reason()))
def test_one_trial_fails_over_to_b_and_leaves_nothing_behind(tmp_path: Path) -> None:
    results = keepalived.run(tmp_path, 1, lambda _: None, (AGGRESSIVE,))
    figures = results["failover"][AGGRESSIVE.label]
    assert results["keepalived"]["skipped"] is None
    assert figures["timed_out"] == 0 and len(figures["trials"]) == 1
    # b takes over no sooner than 3 adverts after the last one it heard (at most one advert
    # before the kill), and well under the trial's timeout
    assert 2 * AGGRESSIVE.advert_int * 1000 < figures["median_ms"] < 5000
    left = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tag = f"bkv{os.getpid()}"
    assert tag not in left


def test_without_root_the_phase_is_skipped_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    said: list[str] = []
    results = keepalived.run(tmp_path, 10, said.append)
    assert results["failover"] == {}
    assert "root" in results["keepalived"]["skipped"] and "root" in said[0]
    assert set(results["keepalived"]["settings"]) == {
        s.label for s in (keepalived.DEFAULT, keepalived.AGGRESSIVE, keepalived.FASTEST)
    }
    assert list(tmp_path.iterdir()) == []  # nothing was built
