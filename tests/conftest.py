"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seeds",
        type=int,
        default=500,
        help="number of seeded random-fault simulation runs (make soak uses 20000)",
    )
    parser.addoption(
        "--sim-first",
        type=int,
        default=0,
        help="first seed of the random-fault simulation runs",
    )
