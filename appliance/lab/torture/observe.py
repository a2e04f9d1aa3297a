"""What the nodes themselves said: primary terms and fences from their logs, views from INFO.

Every agent logs its protocol events with ``t=`` (the event loop's monotonic clock, which on
one machine is the clock of every process and network namespace, and of the clients). From
those lines this module rebuilds:

* **primary terms**: from a node's ``role PRIMARY`` line to its next role line, or to the
  moment it certainly died: a fence of it that succeeded, or a power cut by the nemesis;
* **fences**: who fenced whom, when, and whether it worked;
* **promotions**: every ``role PRIMARY`` line, with its reason.

A :class:`ViewMonitor` thread polls every node's ``INFO replication`` meanwhile, recording the
role, view and primary each node reports: the client-visible side of the same story.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.lab.probe import node_info

__all__ = [
    "FenceEvent",
    "PrimaryTerm",
    "Promotion",
    "ViewMonitor",
    "ViewSample",
    "read_logs",
]

_LINE = re.compile(r"node=(?P<node>\S+) view=(?P<view>\S+) t=(?P<t>[0-9.]+) (?P<what>.*)$")
_ROLE = re.compile(r"role (?P<role>[A-Z_]+): (?P<reason>.*)$")
_FENCE = re.compile(r"fence of node (?P<id>\d+) \((?P<target>[^)]+)\): (?P<result>done|FAILED)")


@dataclass(frozen=True, slots=True)
class Promotion:
    node: str
    view: str
    at: float
    reason: str

    @property
    def founding(self) -> bool:
        return self.reason.startswith("founded")


@dataclass(frozen=True, slots=True)
class FenceEvent:
    by: str
    target: str
    at: float
    ok: bool


@dataclass(frozen=True, slots=True)
class PrimaryTerm:
    """A stretch of time during which ``node`` acted as primary of ``view``."""

    node: str
    view: str
    start: float
    end: float
    ended_by: str


@dataclass(frozen=True, slots=True)
class NodeLogs:
    promotions: list[Promotion]
    fences: list[FenceEvent]
    terms: list[PrimaryTerm]


def _events(path: Path, node: str) -> list[tuple[float, str, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m is not None and m["node"] == node:
            out.append((float(m["t"]), m["view"], m["what"]))
    return out


def read_logs(
    lab_dir: Path,
    names: list[str],
    power_offs: list[tuple[str, float]],
    since: float,
    until: float,
) -> NodeLogs:
    """The terms, promotions and fences the nodes logged between ``since`` and ``until``."""
    promotions: list[Promotion] = []
    fences: list[FenceEvent] = []
    roles: dict[str, list[tuple[float, str, str, str]]] = {n: [] for n in names}
    for name in names:
        path = lab_dir / f"{name}.log"
        if not path.exists():
            continue
        for t, view, what in _events(path, name):
            if (m := _ROLE.match(what)) is not None:
                roles[name].append((t, view, m["role"], m["reason"]))
                if m["role"] == "PRIMARY":
                    promotions.append(Promotion(name, view, t, m["reason"]))
            elif (fm := _FENCE.match(what)) is not None:
                fences.append(FenceEvent(name, fm["target"], t, fm["result"] == "done"))
    deaths: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
    for f in fences:
        if f.ok and f.target in deaths:
            deaths[f.target].append((f.at, f"fenced by {f.by}"))
    for node, t in power_offs:
        if node in deaths:
            deaths[node].append((t, "power pulled"))
    terms: list[PrimaryTerm] = []
    for name, events in roles.items():
        events.sort()
        for i, (t, view, role, _) in enumerate(events):
            if role != "PRIMARY":
                continue
            ends = (
                [(events[i + 1][0], f"became {events[i + 1][2].lower()}")]
                if i + 1 < len(events)
                else []
            )
            ends += [d for d in deaths[name] if d[0] >= t]
            end, why = min(ends) if ends else (until, "still primary at the end")
            terms.append(PrimaryTerm(name, view, t, end, why))
    keep = [p for p in promotions if since <= p.at <= until]
    return NodeLogs(
        sorted(keep, key=lambda p: p.at),
        sorted((f for f in fences if since <= f.at <= until), key=lambda f: f.at),
        sorted((t for t in terms if t.end >= since and t.start <= until), key=lambda t: t.start),
    )


@dataclass(frozen=True, slots=True)
class ViewSample:
    at: float
    node: str
    role: str
    view: str
    primary: str


class ViewMonitor:
    """Polls every node's INFO replication, recording what each says about roles and views."""

    def __init__(self, nodes: dict[str, tuple[str, int]], period: float = 0.05) -> None:
        self.nodes = nodes
        self.period = period
        self.samples: list[ViewSample] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="view-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5.0)

    def _run(self) -> None:
        while not self.stop.is_set():
            for name, (host, port) in self.nodes.items():
                asked = time.monotonic()
                info = node_info(port, timeout=0.3, host=host)
                if info is not None and info.get("view", "none") != "none":
                    self.samples.append(
                        ViewSample(
                            asked,
                            name,
                            info.get("llft_role", "?"),
                            info["view"],
                            info.get("primary", "none"),
                        )
                    )
            self.stop.wait(self.period)
