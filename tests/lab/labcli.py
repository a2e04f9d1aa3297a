"""Reading the lab's status through its command line, as a user does (shared by the lab tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.lab.cli import run_lab


def status(lab_dir: Path) -> dict[str, Any]:
    snap: dict[str, Any] = json.loads(run_lab(lab_dir, "status", "--json").stdout)
    return snap
