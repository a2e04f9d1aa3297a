"""Short fault runs against real labs: every fault kind, both replication styles, all checks.

The seed is random unless ``TORTURE_SEED`` is set; a failure prints the report, whose replay
line repeats the run (``appliance lab torture --seed N ...``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from appliance.lab.netns import available
from appliance.lab.torture.nemesis import PROCESS_FAULTS, Fault
from appliance.lab.torture.runner import RunConfig, run


def _seed() -> int:
    text = os.environ.get("TORTURE_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 10**6)


def _run(tmp_path: Path, faults: tuple[Fault, ...], replication: str, netns: bool = False) -> None:
    config = RunConfig(
        seed=_seed(),
        faults=faults,
        count=len(faults),
        replication=replication,
        netns=netns,
        lab_dir=tmp_path / "lab",
        out_dir=tmp_path,
    )
    lines: list[str] = []
    report = run(config, log=lines.append)
    text = report.render()
    print(text)
    assert report.ok, "\n".join([*lines, "", text])
    assert len(report.faults) == config.count
    assert report.ops["all"]["ok"] > 100 * config.count  # the clients kept writing throughout


def test_process_faults_semi_active(tmp_path: Path) -> None:
    _run(tmp_path, PROCESS_FAULTS, "semi-active")


@pytest.mark.skipif(available() is None, reason="the netns run covers semi-passive")
def test_process_faults_semi_passive(tmp_path: Path) -> None:
    _run(tmp_path, PROCESS_FAULTS, "semi-passive")


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_every_fault_semi_passive_netns(tmp_path: Path) -> None:
    _run(tmp_path, tuple(Fault), "semi-passive", netns=True)
