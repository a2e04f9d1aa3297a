"""The join CPU control restores the faults benchmark's store and re-encodes it in a child."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from appliance.protocols.replication import DeterminismProxy
from appliance.service.kv import KVStore
from benchmarks.client import VALUE
from benchmarks.join_cpu import write_snapshot


def test_the_snapshot_is_the_preloaded_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write_snapshot(path, 50, VALUE)
    store = KVStore.restore(path.read_bytes(), DeterminismProxy())
    assert store.execute([b"DBSIZE"]).reply == 50
    assert store.execute([b"GET", b"preload:49"]).reply == VALUE


def test_the_control_runs_and_says_when_its_start_up_ended(tmp_path: Path) -> None:
    path = tmp_path / "s"
    write_snapshot(path, 200, VALUE)
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.join_cpu", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert before < float(done.stdout) < time.time()


def test_a_missing_argument_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.join_cpu"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "usage" in done.stderr
