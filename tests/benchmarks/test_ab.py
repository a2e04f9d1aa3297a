"""The A/B tool: two versions' labs, alternating batches, and its worktrees cleaned up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _worktrees() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def test_two_versions_alternate_batches_and_leave_no_worktree(tmp_path: Path) -> None:
    before = _worktrees()
    out = tmp_path / "ab.json"
    args = ["HEAD", "--nodes", "1", "--writes", "20", "--rounds", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert list(result) == ["A HEAD", "B working tree"]
    for r in result.values():
        assert len(r["p50_ms_per_batch"]) == 2 and all(x > 0 for x in r["p50_ms_per_batch"])
        assert r["cpu_ms_per_write"] >= 0
    assert "A HEAD: p50" in done.stdout and "B working tree: p50" in done.stdout
    assert _worktrees() == before


def test_an_unknown_revision_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "no-such-revision", "--nodes", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot check out no-such-revision" in done.stderr
