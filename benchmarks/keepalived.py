"""keepalived-style VIP failover: the gap when the node holding a virtual address loses power.

Users compare the appliance with the common "two boxes and a floating address" setup, so the
benchmark builds it: two network namespaces (``a`` and ``b``) on a bridge the benchmark
creates, each running a standalone ``redis-server`` and a ``keepalived`` with one VRRP instance
(unicast adverts, ``a`` at the higher priority) that owns a virtual address (VIP) on the bridge.
The client writes from the host namespace through the bridge to VIP:6379, exactly as it does to
the other systems (:func:`benchmarks.failover.run_trial`, with a short socket timeout so a
write hanging on a vanished node is abandoned quickly, as a careful client would).

A trial pulls ``a``'s power, at a random point of its advert cycle: its bridge port goes down
(nothing more leaves it, no last advert, no TCP reset) and its keepalived and redis-server are
SIGKILLed. The gap runs from that moment to the first write acknowledged through the VIP, now
on ``b``: ``b``'s master-down timer (3 adverts plus a skew), its gratuitous ARP, the host's
neighbour cache taking the new MAC address, and the client's reconnection. Then ``a`` is
restored and takes the VIP back (preemption) before the next trial.

keepalived moves an address, not data: the two Redis servers are not replicated here, so what
``a`` acknowledged before the kill is gone. The figure is the availability gap only.

Needs root (namespaces, links, addresses) and Debian's ``keepalived``; without them the phase
is skipped and the results say why.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks import failover
from benchmarks.client import connect
from benchmarks.peers import Process, redis_server_binary, wait_for

__all__ = [
    "AGGRESSIVE",
    "DEFAULT",
    "FASTEST",
    "Testbed",
    "VrrpSettings",
    "render_config",
    "run",
    "skip_reason",
]

PORT = 6379
TRIAL_TIMEOUT = 15.0
"""Seconds after the kill before a trial is given up (and counted as timed out)."""
SOCKET_TIMEOUT = 0.1
"""The client's connect/read timeout: a write to the dead node is abandoned after this."""
NODES = ("a", "b")
PRIORITY = {"a": 150, "b": 100}


@dataclass(frozen=True, slots=True)
class VrrpSettings:
    """How quickly a VRRP backup takes over: the advertisement interval and VRRP version."""

    name: str
    advert_int: float
    version: int

    @property
    def label(self) -> str:
        v3 = ", VRRPv3" if self.version == 3 else ""
        return f"keepalived VIP {self.name} (advert_int {self.advert_int:g} s{v3})"

    def master_down_s(self, priority: int) -> float:
        """RFC 5798's Master_Down_Interval for a backup of ``priority``: 3 adverts plus skew."""
        return 3 * self.advert_int + (256 - priority) / 256 * self.advert_int


DEFAULT = VrrpSettings("default", 1.0, 2)
"""keepalived's defaults (VRRPv2, 1 s adverts): the backup waits ~3.6 s."""
AGGRESSIVE = VrrpSettings("aggressive", 0.1, 3)
"""VRRPv3 with 100 ms adverts: sub-second adverts need v3."""
FASTEST = VrrpSettings("fastest", 0.01, 3)
"""The shortest interval keepalived accepts (10 ms): a ~36 ms master-down timer."""


def render_config(
    settings: VrrpSettings, node: str, interface: str, addresses: dict[str, str], vip: str
) -> str:
    """The keepalived.conf of ``node``: one VRRP instance, unicast to the other node."""
    peer = next(n for n in addresses if n != node)
    state = "MASTER" if PRIORITY[node] == max(PRIORITY.values()) else "BACKUP"
    return (
        "global_defs {\n"
        f"    router_id bench_{node}\n"
        f"    vrrp_version {settings.version}\n"
        "    script_user root\n"
        "}\n"
        "vrrp_instance bench {\n"
        f"    state {state}\n"
        f"    interface {interface}\n"
        "    virtual_router_id 51\n"
        f"    priority {PRIORITY[node]}\n"
        f"    advert_int {settings.advert_int:g}\n"
        f"    unicast_src_ip {addresses[node]}\n"
        "    unicast_peer {\n"
        f"        {addresses[peer]}\n"
        "    }\n"
        "    virtual_ipaddress {\n"
        f"        {vip}/24 dev {interface}\n"
        "    }\n"
        "}\n"
    )


def skip_reason() -> str | None:
    """Why this phase cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a bridge, VRRP sockets)"
    for tool, package in (("keepalived", "keepalived"), ("ip", "iproute2")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (Debian: apt-get install {package})"
    try:
        redis_server_binary()
    except FileNotFoundError as e:
        return str(e)
    return None


def _ip(*args: str, check: bool = True) -> str:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A private /24 that no interface or route on the host uses."""
    used = _ip("-4", "-o", "addr") + _ip("-4", "route")
    for third in [(os.getpid() + i) % 200 + 20 for i in range(200)]:
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if f"10.213.{third}." not in used:
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet")


class Testbed:
    """Bridge, two namespaces, and a redis-server plus keepalived in each; ``close`` undoes all.

    Names carry the benchmark's pid (``bkv<pid>...``), so concurrent runs do not collide and a
    leftover is recognisable.
    """

    def __init__(self, workdir: Path, settings: VrrpSettings) -> None:
        self.settings = settings
        tag = f"bkv{os.getpid()}{settings.name[0]}"  # at most 15 characters with suffixes
        self.bridge = f"{tag}br"
        self.ns = {n: f"{tag}-{n}" for n in NODES}
        self.host_if = {n: f"{tag}{n}" for n in NODES}
        self.inner_if = {n: f"{tag}{n}p" for n in NODES}
        self.dir = workdir / f"keepalived-{settings.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis: dict[str, Process] = {}
        self.keepalived: dict[str, Process] = {}
        self._made: list[Callable[[], object]] = []
        try:
            net = _free_subnet()
            hosts = list(net.hosts())
            self.host_addr = str(hosts[0])
            self.addr = {n: str(hosts[i + 1]) for i, n in enumerate(NODES)}
            self.vip = str(hosts[99])
            self._build()
            for n in NODES:
                self._start(n)
            wait_for("the VIP on node a and writes through it", self.stable, 30)
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(functools.partial(_ip, "link", "del", self.bridge, check=False))
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n in NODES:
            ns = self.ns[n]
            _ip("netns", "add", ns)
            self._made.append(functools.partial(_ip, "netns", "del", ns, check=False))
            _ip(
                "link", "add", self.host_if[n], "type", "veth",
                "peer", "name", self.inner_if[n], "netns", ns,
            )  # fmt: skip
            # deleting the namespace removes the pair only eventually: delete it at once
            self._made.append(functools.partial(_ip, "link", "del", self.host_if[n], check=False))
            _ip("link", "set", self.host_if[n], "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[n]}/24", "dev", self.inner_if[n])
            _ip("-n", ns, "link", "set", self.inner_if[n], "up")

    def _start(self, n: str) -> None:
        d = self.dir / n
        d.mkdir(exist_ok=True)
        exec_ns = ["ip", "netns", "exec", self.ns[n]]
        argv = [*exec_ns, redis_server_binary(), "--port", str(PORT), "--bind", "0.0.0.0"]
        argv += ["--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(d)]
        self.redis[n] = Process(argv, d / "redis.log", d)
        wait_for(f"redis-server on {n}", lambda: bool(self._client(self.addr[n]).ping()), 10)
        conf = d / "keepalived.conf"
        conf.write_text(render_config(self.settings, n, self.inner_if[n], self.addr, self.vip))
        argv = [*exec_ns, "keepalived", "-n", "-l", "-D", "-G", "-P", "-f", str(conf)]
        argv += ["-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid")]
        argv += ["-c", str(d / "checkers.pid")]
        self.keepalived[n] = Process(argv, d / "keepalived.log", d)

    @staticmethod
    def _client(host: str) -> redis.Redis:
        return connect(host, PORT, 1.0)

    def holds_vip(self, n: str) -> bool:
        out = _ip("-n", self.ns[n], "-4", "-o", "addr", "show", "dev", self.inner_if[n])
        return f" {self.vip}/" in out

    def stable(self) -> bool:
        """The VIP is on ``a`` only, and a write through it lands on ``a``'s redis-server."""
        if not self.holds_vip("a") or self.holds_vip("b"):
            return False
        via, direct = self._client(self.vip), self._client(self.addr["a"])
        try:
            return bool(via.info("server")["run_id"] == direct.info("server")["run_id"])
        finally:
            via.close()
            direct.close()

    def _kill(self, n: str) -> None:
        """SIGKILL keepalived (parent and VRRP child, by their pid files) and redis-server."""
        procs = [p for p in (self.keepalived.get(n), self.redis.get(n)) if p is not None]
        d = self.dir / n
        for f in ("vrrp.pid", "keepalived.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((d / f).read_text().split()[0]), signal.SIGKILL)
        for p in procs:
            p.kill()
        # the VRRP child may linger as a zombie for a moment, and a pid file naming it makes
        # the next keepalived refuse to start ("daemon is already running")
        for f in ("vrrp.pid", "keepalived.pid", "checkers.pid"):
            (d / f).unlink(missing_ok=True)

    def pull_power(self, n: str) -> float:
        """Cut ``n`` off the bridge and kill its daemons at once; when it struck."""
        t = time.time()
        _ip("link", "set", self.host_if[n], "down")
        self._kill(n)
        return t

    def restore(self, n: str) -> None:
        """Power ``n`` back on: a killed keepalived leaves its VIP behind, so drop it first."""
        self._kill(n)  # a trial that failed before its kill left them running
        _ip("-n", self.ns[n], "addr", "del", f"{self.vip}/24", "dev", self.inner_if[n], check=False)
        _ip("link", "set", self.host_if[n], "up")
        self._start(n)
        wait_for("the VIP back on node a", self.stable, 30)

    def takeovers(self, n: str) -> int:
        """How often ``n``'s keepalived became master, by its log.

        ``b`` should take over once per trial; more means it took the VIP from a live ``a``
        (a false failover: adverts late on a loaded machine), or first at start-up.
        """
        log = self.dir / n / "keepalived.log"
        return log.read_text(errors="replace").count("Entering MASTER STATE")

    def close(self) -> None:
        for n in NODES:
            with contextlib.suppress(Exception):
                self._kill(n)
        for undo in reversed(self._made):
            with contextlib.suppress(Exception):
                undo()
        self._made.clear()


def _vip(bed: Testbed) -> tuple[str, int]:
    return (bed.vip, PORT)


def _pull_at_random_phase(bed: Testbed, rng: random.Random) -> float:
    """Pull ``a``'s power at a random point between two of its adverts.

    A trial starts soon after ``a`` became master (and sent an advert), so without this the
    kill would always fall at the same phase of the advert cycle, and the gap (the backup's
    timer runs from the last advert it heard) would look steadier than it is.
    """
    time.sleep(rng.uniform(0, bed.settings.advert_int))
    return bed.pull_power("a")


def _summary(gaps: list[float], timed_out: int, failed: list[float]) -> dict[str, Any]:
    trials = [{"gap_ms": g, "failed_writes": f} for g, f in zip(gaps, failed, strict=True)]
    return {
        "median_ms": round(statistics.median(gaps), 2) if gaps else None,
        "worst_ms": max(gaps) if gaps else None,
        "trials": trials,
        "timed_out": timed_out,
    }


def run(
    workdir: Path,
    trials: int,
    say: Callable[[str], None],
    settings: tuple[VrrpSettings, ...] = (DEFAULT, AGGRESSIVE, FASTEST),
) -> dict[str, Any]:
    """Every setting's trials: ``{"failover": {label: figures}, "keepalived": {...}}``."""
    info: dict[str, Any] = {
        "settings": {
            s.label: {
                "advert_int_s": s.advert_int,
                "vrrp_version": s.version,
                "master_down_s": round(s.master_down_s(PRIORITY["b"]), 3),
            }
            for s in settings
        },
        "socket_timeout_s": SOCKET_TIMEOUT,
        "trial_timeout_s": TRIAL_TIMEOUT,
        "replicated": False,
    }
    reason = skip_reason()
    if reason is not None:
        say(f"keepalived VIP failover skipped: {reason}")
        return {"failover": {}, "keepalived": info | {"skipped": reason}}
    version = subprocess.run(["keepalived", "-v"], capture_output=True, text=True, timeout=10)
    # "Keepalived v2.2.7 (01/16,2022)" on stderr
    words = (version.stderr + version.stdout).split()
    info["version"] = next((w[1:] for w in words if w.startswith("v") and w[1:2].isdigit()), "?")
    out: dict[str, Any] = {}
    rng = random.Random(0x6B61)  # a fixed seed: the same kill phases run after run
    for s in settings:
        gaps: list[float] = []
        failed: list[float] = []
        timed_out = 0
        bed = Testbed(workdir, s)
        try:
            for i in range(trials):
                say(f"failover trial {i + 1}/{trials}: {s.label}")
                try:
                    r = failover.run_trial(
                        functools.partial(_vip, bed),
                        functools.partial(_pull_at_random_phase, bed, rng),
                        timeout=TRIAL_TIMEOUT,
                        socket_timeout=SOCKET_TIMEOUT,
                    )
                    gaps.append(r["gap_ms"])
                    failed.append(r["failed_writes"])
                except TimeoutError as e:
                    say(f"  {e}: counted as timed out")
                    timed_out += 1
                bed.restore("a")
        finally:
            bed.close()
        out[s.label] = _summary(gaps, timed_out, failed)
        out[s.label]["spurious_takeovers"] = bed.takeovers("b") - trials
    return {"failover": out, "keepalived": info | {"skipped": None}}
