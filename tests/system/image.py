"""The Debian bookworm root the system test boots: built once with debootstrap, then cached.

The root holds everything the playbook's ``common`` role installs, because the containers have
no internet: the role's apt tasks must find their packages present. The cache lives outside the
repository (``/var/cache/appliance-system-test/`` by default, ``APPLIANCE_SYSTEM_CACHE`` to move
it), one directory per package list, so a changed list builds a new root instead of reusing a
stale one. The mirror is the one this machine's apt sources use.

Run ``python -m tests.system.image`` (as root) to build it ahead of a test run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    # booting with systemd as PID 1, networkd for the static address, sshd for Ansible
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    # what Ansible needs on a managed node (its apt module needs python3-apt; become needs sudo)
    "python3",
    "python3-apt",
    "sudo",
    # what the common role installs (ansible/roles/common/defaults/main.yml, common_packages)
    "python3-venv",
    "systemd-timesyncd",
)
DEFAULT_CACHE = Path("/var/cache/appliance-system-test")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    return Path(os.environ.get("APPLIANCE_SYSTEM_CACHE", str(DEFAULT_CACHE)))


def image_key() -> str:
    """Names the root by what is in it: suite and sorted package list."""
    text = "\n".join([SUITE, "minbase", *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_path() -> Path:
    return cache_dir() / f"{SUITE}-{image_key()}"


def host_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line format)."""
    texts = [p.read_text() for p in sorted(sources.glob("sources.list.d/*.sources"))]
    for text in texts:
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    legacy = sources / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line + " ")
            if m:
                return m.group(1)
    return DEFAULT_MIRROR


def ensure_image(log: object = print) -> Path:
    """The cached root, built first if missing (about a minute and 350 MB)."""
    root = image_path()
    done = root / ".complete"
    if done.exists():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    mirror = host_mirror()
    started = time.monotonic()
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(work),
        mirror,
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(argv)} failed (exit {p.returncode}):\n{tail}")
    _prepare(work)
    shutil.rmtree(root, ignore_errors=True)
    work.rename(root)
    done.write_text(f"{mirror}\n")
    if callable(log):
        log(f"built {root} from {mirror} in {time.monotonic() - started:.0f} s")
    return root


def _prepare(root: Path) -> None:
    """What every node's copy shares: networkd on, no host identity, no stale ssh host keys."""
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    unit = wants / "systemd-networkd.service"
    if not unit.exists():
        unit.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # Every node's copy gets its own ssh host keys (nodes.py) and its machine-id at first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("localhost\n")
    apt_clean = root / "var/cache/apt/archives"
    for deb in apt_clean.glob("*.deb"):
        deb.unlink()


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("building the system test's root needs root (debootstrap)")
    print(ensure_image())
