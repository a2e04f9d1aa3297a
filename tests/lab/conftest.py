"""A lab directory per test, whose lab is always brought down afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labcli import lab


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "lab"
    try:
        yield d
    finally:
        lab(d, "down", check=False)
