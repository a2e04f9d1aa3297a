"""What the numbers were measured on: CPU, cores, kernel, Python and every system's version."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

from benchmarks.peers import redis_server_binary

__all__ = ["describe"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _redis_server() -> str:
    out = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


def describe() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "appliance": _version("appliance"),
            "redis-server": _redis_server(),
            "pysyncobj": _version("pysyncobj"),
            "redis-py": _version("redis"),
        },
    }
