"""The full mode measures every system alone: the quick mode's shortcuts stay out of it."""

from __future__ import annotations

from benchmarks import faults
from benchmarks.run import FULL


def test_full_mode_starts_every_system_for_its_own_phase() -> None:
    assert not FULL.prestart and not FULL.reuse and not FULL.faults_on_failover_lab
    assert FULL.redis_sync_delay_s is None  # Redis's own default
    assert FULL.fault_baseline_s == faults.BASELINE
