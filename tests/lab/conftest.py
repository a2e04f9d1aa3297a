"""A lab directory per test, whose lab is always brought down afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.lab.cli import run_lab


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "lab"
    try:
        yield d
    finally:
        run_lab(d, "down", check=False)
