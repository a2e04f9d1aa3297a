"""Guard the sans-I/O rule for the whole of ``appliance.protocols``.

The protocol core must stay a pure state machine (time passed in as ``now``, timers returned as
deadlines) so the deterministic simulator can run it on a simulated clock and network and replay a
failing seed exactly. One stray ``import time`` or ``import random`` silently breaks that, so this
test parses every module in the package, including ones added later, and names the offending
file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import appliance.protocols

FORBIDDEN = frozenset(
    {
        "socket",
        "asyncio",
        "threading",
        "time",
        "random",
        "os",
        "subprocess",
        "selectors",
        "multiprocessing",
    }
)

PACKAGE_DIR = Path(appliance.protocols.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent


def _forbidden(module: str) -> bool:
    """True for a forbidden module or any of its submodules (``os.path``, ``asyncio.events``)."""
    return module.split(".", 1)[0] in FORBIDDEN


def _dynamic_import_target(node: ast.Call) -> str | None:
    """The literal module name of ``__import__("x")`` / ``importlib.import_module("x")``."""
    func = node.func
    is_dunder = isinstance(func, ast.Name) and func.id == "__import__"
    is_importlib = isinstance(func, ast.Attribute) and func.attr == "import_module"
    if not (is_dunder or is_importlib) or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def violations(source: str, filename: str) -> list[str]:
    """Every forbidden import in ``source``, as "file:line: message" strings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _forbidden(alias.name):
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) stay inside the package, which this test also checks.
            if node.level == 0 and node.module is not None and _forbidden(node.module):
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"{filename}:{node.lineno}: from {node.module} import {names}")
        elif isinstance(node, ast.Call):
            target = _dynamic_import_target(node)
            if target is not None and _forbidden(target):
                found.append(f"{filename}:{node.lineno}: dynamic import of {target!r}")
    return found


def _protocol_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def test_package_has_modules() -> None:
    """Guard the guard: if discovery found nothing, the purity test would pass vacuously."""
    assert (PACKAGE_DIR / "__init__.py") in _protocol_files()


@pytest.mark.parametrize("path", _protocol_files(), ids=_display)
def test_module_is_sans_io(path: Path) -> None:
    name = _display(path)
    try:
        source = path.read_text(encoding="utf-8")
        found = violations(source, name)
    except SyntaxError as exc:
        pytest.fail(f"{name}:{exc.lineno}: cannot parse: {exc.msg}")
    assert not found, "sans-I/O violation (protocols must not do I/O):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import time as clock",
        "import json, socket",
        "from time import monotonic",
        "from os.path import join",
        "from asyncio import events",
        "from multiprocessing.pool import Pool",
        "import selectors",
        "import subprocess",
        "import threading",
        "import random",
        "def f():\n    import random\n",
        "if TYPE_CHECKING:\n    import asyncio\n",
        "try:\n    import socket\nexcept ImportError:\n    pass\n",
        "__import__('time')",
        "import importlib\nimportlib.import_module('os.path')",
    ],
)
def test_checker_catches(source: str) -> None:
    found = violations(source, "example.py")
    assert found
    assert all(line.startswith("example.py:") for line in found)


@pytest.mark.parametrize(
    "source",
    [
        "import timeit",
        "import osmium",
        "import randomness",
        "import typing\nfrom dataclasses import dataclass",
        "from . import time",
        "from .os import thing",
        "from ..random import x",
        "import appliance.protocols.time",
        "x = 'import os'",
    ],
)
def test_checker_allows(source: str) -> None:
    assert violations(source, "example.py") == []


def test_checker_reports_line_numbers() -> None:
    source = "import json\n\nfrom time import sleep\n"
    assert violations(source, "pkg/mod.py") == ["pkg/mod.py:3: from time import sleep"]
