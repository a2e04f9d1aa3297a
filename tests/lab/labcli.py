"""Driving the lab through its command line, as a user does (shared by the lab tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def lab(lab_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "appliance", "lab", *args, "--dir", str(lab_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


def status(lab_dir: Path) -> dict[str, Any]:
    snap: dict[str, Any] = json.loads(lab(lab_dir, "status", "--json").stdout)
    return snap
