"""``make demo``: pull the primary's power under a writing client and show what happened.

The script starts a 3-node lab, runs a client writing sequential keys through a backup, pulls
the primary's plug, and prints a timeline in milliseconds from the pull: the backup's
suspicion, its fence of the old primary, the new view, the first write served after the pull,
and the old primary's return as a backup (the fence power-cycles it, it boots, and rejoins by
state transfer). Then it checks that every acknowledged key is on every node and says so.
The timeline's node events come from the agents' own log lines; the client's from its clock.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from appliance.lab.layout import LabState
from appliance.lab.probe import Connection
from appliance.service.resp import Error

__all__ = ["DemoResult", "run_demo"]

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
BATCH = 50
"""Keys per MGET when checking: a request must fit one datagram."""


@dataclass(eq=False)
class Writer(threading.Thread):
    """Sequential ``SET demo:i i`` through one node, one at a time; what was acknowledged when."""

    port: int
    host: str
    acked: dict[str, float] = field(default_factory=dict)
    """Key -> when its SET was acknowledged."""
    invoked: dict[str, float] = field(default_factory=dict)
    """Key -> when its SET was sent."""
    errors: list[tuple[float, str]] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        conn: Connection | None = None
        i = 0
        while not self.halt.is_set():
            i += 1
            key = f"demo:{i}"
            try:
                if conn is None:
                    conn = Connection(self.port, timeout=5, host=self.host)
                self.invoked[key] = time.time()
                reply = conn.call("SET", key, i)
            except OSError as e:
                self.errors.append((time.time(), f"{key}: {e}"))
                conn = None
                time.sleep(0.01)
                continue
            if isinstance(reply, Error):
                self.errors.append((time.time(), f"{key}: {reply.message}"))
            else:
                self.acked[key] = time.time()


@dataclass
class DemoResult:
    timeline: list[tuple[float, str]]
    acked: int
    missing: dict[str, int]
    gap_ms: float
    errors: list[tuple[float, str]]

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and not self.errors


def _log_events(path: Path, since: float) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if m is None:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if t >= since:
            out.append((t, line[m.end() :]))
    return out


def _msg(text: str) -> str:
    """A log line without its level and node/view/time prefix."""
    return re.sub(r"^\S+ node=\S+ view=\S+ t=\S+ ", "", text)


def _first(events: list[tuple[float, str]], pattern: str) -> tuple[float, str] | None:
    rx = re.compile(pattern)
    return next(((t, text) for t, text in events if rx.search(text)), None)


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_demo(
    lab_dir: Path,
    state: LabState,
    primary: str,
    say: Callable[[str], None] = print,
    network: bool = False,
) -> DemoResult:
    """Pull the primary's power (or, ``network``, its network cable) under a writing client."""
    from appliance.lab.cli import snapshot, strip_command  # the lab CLI's own views
    from appliance.lab.netns import LabNetwork

    old = state.node(primary)
    client_node = next(n for n in state.nodes if n.name != primary)
    say(f"client: sequential SETs through {client_node.name} (port {client_node.client_port})")
    writer = Writer(client_node.client_port, client_node.address)
    writer.start()
    _wait("the first writes", lambda: len(writer.acked) >= 200, 30)
    what = "network cable" if network else "power"
    net = LabNetwork.for_lab(lab_dir, [n.name for n in state.nodes]) if network else None
    pulled = time.time()
    say(f"pulling the {what} of {primary}, the primary, after {len(writer.acked)} writes")
    plugged = None
    if net is not None:
        net.link(primary, False)
        _wait(
            "a new primary",
            lambda: snapshot(LabState.read(lab_dir / "lab.json"))["primary"] not in (None, primary),
            60,
        )
        resumed = len(writer.acked)
        _wait("writes on the new primary", lambda: len(writer.acked) > resumed + 100, 30)
        say(f"plugging {primary}'s network cable back in")
        plugged = time.time()
        net.link(primary, True)
    else:
        strip_command(state, f"Power{old.id} Off")

    def back_as_backup() -> bool:
        snap = snapshot(LabState.read(lab_dir / "lab.json"))
        roles = {n["name"]: n["role"] for n in snap["nodes"]}
        return bool(snap["formed"]) and roles.get(primary) == "backup"

    _wait(f"{primary} back as a backup", back_as_backup, 60)
    acked_before_stop = len(writer.acked)
    _wait("more writes", lambda: len(writer.acked) > acked_before_stop + 100, 30)
    writer.halt.set()
    writer.join(10)

    events: list[tuple[float, str]] = [(pulled, f"{what} of {primary} pulled")]
    if plugged is not None:
        events.append((plugged, f"{primary}'s network cable plugged back in"))
    logs = {n.name: _log_events(lab_dir / f"{n.name}.log", pulled) for n in state.nodes}
    others = [e for n in state.nodes if n.name != primary for e in logs[n.name]]
    others.sort()
    for pattern, label in (
        (rf"primary {old.id} suspected", "suspected by"),
        (rf"fence of node {old.id} \(\S+\): done", "fenced (outlet confirmed off) by"),
        (r"role PRIMARY: primary of view", "new primary:"),
    ):
        found = _first(others, pattern)
        if found is not None:
            who = re.search(r"node=(\S+)", found[1])
            events.append((found[0], f"{label} {who.group(1) if who else '?'}: {_msg(found[1])}"))
    times = sorted(writer.acked.values())
    after = [writer.acked[k] for k, t in writer.invoked.items() if t > pulled and k in writer.acked]
    if after:
        events.append((min(after), "first write sent after the pull acknowledged"))
    booted = _first(logs[primary], r"incarnation=")
    if booted is not None:
        events.append((booted[0], f"{primary} powered on again by the fence's power-cycle"))
    rejoined = _first(logs[primary], r"role BACKUP: accepted into view")
    if rejoined is not None:
        events.append((rejoined[0], f"{primary} rejoined as a backup: {_msg(rejoined[1])}"))
    events.sort()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    missing: dict[str, int] = {}
    keys = list(writer.acked)
    for n in state.nodes:
        with Connection(n.client_port, timeout=10, host=n.address) as c:
            lost = 0
            for i in range(0, len(keys), BATCH):
                batch = keys[i : i + BATCH]
                values = c.call("MGET", *batch)
                assert isinstance(values, list)
                lost += sum(1 for k, v in zip(batch, values, strict=True) if v != k[5:].encode())
            missing[n.name] = lost
    return DemoResult(events, len(keys), missing, max(gaps, default=0.0) * 1000, writer.errors)


def report(result: DemoResult) -> str:
    t0 = result.timeline[0][0]
    lines = ["", "timeline (ms after the pull):"]
    for t, text in result.timeline:
        lines.append(f"  {1000 * (t - t0):8.1f}  {text}")
    lines.append("")
    lines.append(f"longest gap between two acknowledged writes: {result.gap_ms:.1f} ms")
    for name, lost in result.missing.items():
        lines.append(f"  {name}: {result.acked - lost}/{result.acked} acknowledged keys present")
    for t, text in result.errors[:5]:
        lines.append(f"  client error at {1000 * (t - t0):.1f} ms: {text}")
    verdict = "PASS" if result.ok else "FAIL"
    lines.append(
        f"{verdict}: {result.acked} acknowledged writes, "
        + ("none lost, no client error" if result.ok else "see above")
    )
    return "\n".join(lines)
