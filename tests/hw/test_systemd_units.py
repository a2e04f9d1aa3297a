"""The shipped systemd units: ``systemd-analyze verify`` accepts the service with no warning,
its settings match the agent's defaults, and the watchdog drop-in fits the Pi's hardware."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.node.agent import DEFAULT_STATE_DIR

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "appliance.service"


def unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(path)
    return p


def test_service_settings() -> None:
    s = unit(SERVICE)["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["Restart"] == "on-failure"
    watchdog = re.fullmatch(r"(\d+)s", s["WatchdogSec"])
    assert watchdog is not None and 2 <= int(watchdog[1]) <= 30
    assert s["ExecStart"].split()[1:] == ["agent", "--config", "/etc/appliance/cluster.toml"]
    assert Path(s["ExecStart"].split()[0]).name == "appliance"
    assert s["SupplementaryGroups"] == "gpio" and s["User"] not in ("root", "0")
    assert s["DevicePolicy"] == "closed" and s["DeviceAllow"] == "char-gpiochip rw"
    assert "PrivateDevices" not in s, "it would hide /dev/gpiochip*"
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    families = set(s["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families
    assert Path("/var/lib") / s["StateDirectory"] == DEFAULT_STATE_DIR
    assert s["RuntimeDirectory"] == "appliance"
    assert s["WorkingDirectory"] == "/run/appliance", "lgpio needs a writable working directory"


def test_hardware_watchdog_fits_the_bcm2835() -> None:
    m = unit(UNITS / "watchdog.conf")["Manager"]
    value = re.fullmatch(r"(\d+)s", m["RuntimeWatchdogSec"])
    assert value is not None and 0 < int(value[1]) <= 14


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_service(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's entry point
    exe = Path(sys.executable).with_name("appliance")
    assert exe.exists()
    text = SERVICE.read_text().replace("/usr/local/bin/appliance", str(exe))
    copy = tmp_path / "appliance.service"
    copy.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    ours = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if "appliance.service" in line or str(tmp_path) in line
    ]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_service_is_well_confined(tmp_path: Path) -> None:
    copy = tmp_path / "appliance.service"
    copy.write_text(SERVICE.read_text())
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security report: {out.stderr.strip()}")
    assert float(m[1]) <= 3.0, out.stdout
