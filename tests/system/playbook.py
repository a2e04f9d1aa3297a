"""Running the real ``ansible/site.yml`` against the system test's nodes.

The inventory is generated for the nodes the test booted: root over SSH with the test's key,
``tasmota`` fence devices on the test's power strip (one channel per node), no GPIO pins, the
multicast interface ``host0``, no apt cache refresh (the containers have no internet). The
cluster key is a fresh one in an Ansible Vault file encrypted with a generated password file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.system.nodes import SSH_OPTIONS, Nodes

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:\w+=\d+\s*)+)$", re.M)


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, rescued, ignored}."""
        _, _, tail = self.output.rpartition("PLAY RECAP")
        return {
            m["host"]: {k: int(v) for k, v in (kv.split("=") for kv in m["counts"].split())}
            for m in RECAP.finditer(tail)
        }

    def changed_tasks(self) -> list[str]:
        """The tasks that reported a change, with the host (for a readable failure)."""
        out, task = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line
            elif line.startswith("changed:"):
                out.append(f"{task} {line}")
        return out


def write_inventory(dirpath: Path, nodes: Nodes, strip_url: str) -> Path:
    """hosts.yml, group_vars/cluster.yml and the encrypted group_vars/all/vault.yml."""
    hosts = {
        n.name: {
            "ansible_host": n.address,
            "appliance_node_id": n.index,
            "appliance_fence": [
                {"type": "tasmota", "url": strip_url, "channel": n.index, "timeout_ms": 5000}
            ],
        }
        for n in nodes.nodes
    }
    ssh_args = " ".join(SSH_OPTIONS)
    inventory = {
        "cluster": {
            "hosts": hosts,
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(nodes.ssh_key),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
            },
        }
    }
    group_vars = {
        "common_apt_update_cache": False,
        "common_lan_interface": "host0",
        "appliance_cluster_name": "system-test",
        "appliance_network_interface": "host0",
        "appliance_witness": "none",
        "appliance_build_dir": str(dirpath / "wheelhouse"),
        "appliance_cluster_key": "{{ vault_appliance_cluster_key }}",
        "appliance_ready_timeout": 90,
    }
    (dirpath / "group_vars/all").mkdir(parents=True, exist_ok=True)
    # JSON is YAML: no YAML writer needed.
    (dirpath / "hosts.yml").write_text(json.dumps(inventory, indent=2) + "\n")
    (dirpath / "group_vars/cluster.yml").write_text(json.dumps(group_vars, indent=2) + "\n")
    password = dirpath / "vault-password"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    password.chmod(0o600)
    vault = dirpath / "group_vars/all/vault.yml"
    vault.write_text(f"vault_appliance_cluster_key: {secrets.token_hex(32)}\n")
    subprocess.run(
        [str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password), str(vault)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dirpath / "hosts.yml"


def run_playbook(inventory: Path, workdir: Path, timeout: float = 600) -> PlaybookRun:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=20s",
    }
    started = time.monotonic()
    p = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            "--vault-password-file",
            str(inventory.parent / "vault-password"),
            "site.yml",
        ],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return PlaybookRun(p.returncode, p.stdout + p.stderr, time.monotonic() - started)


def close_ssh_masters(workdir: Path) -> None:
    """Stop the ssh connection masters Ansible left for reuse (ControlPersist)."""
    for sock in (workdir / "cp").glob("*"):
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "placeholder"],
            capture_output=True,
            timeout=10,
        )
