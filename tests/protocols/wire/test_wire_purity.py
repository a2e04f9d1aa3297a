"""The wire package is sans-I/O: it must not import anything that does I/O, time or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import appliance.protocols.wire as wire

FORBIDDEN = {"socket", "asyncio", "threading", "time", "random", "os", "select", "selectors"}


def test_no_io_imports() -> None:
    package = Path(wire.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 7
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
