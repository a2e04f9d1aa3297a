"""The agent's local control channel, and the commands that use it.

The agent serves a pyzmq REP socket on ``ipc://`` (a Unix socket file, mode 0660, in a directory
of mode 0750 or stricter), from its own event loop (``zmq.asyncio``). Each request is one JSON
object with ``"version": 1`` and ``"request"``:

* ``status``: this node's view of the cluster (role, rank, view, members, each peer's last
  datagram and wire state, replication lag, dropped datagrams by reason);
* ``step-down``: the primary hands its role over to rank 2 (graceful, no fence) and the reply
  says how it ended;
* ``fence`` with ``node`` (name or id) and ``action`` (``off``, ``on``, ``cycle``): run the
  node's fence devices through the agent, as the protocol does before excluding a node.

Every reply is a JSON object with ``version`` and ``ok``; ``ok: false`` comes with ``error``, a
sentence. A malformed request gets such a reply and the agent keeps serving.

The same module holds the client side: ``appliance status [--json]``, ``appliance step-down``
and ``appliance fence NODE [--action off|on|cycle]``, and the agent's graceful shutdown on
SIGTERM (a primary hands over first, a backup leaves without being fenced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from appliance.node.config import ClusterConfig, ConfigError, NodeConfig, load_config
from appliance.protocols.events import Event, HandoverFinished
from appliance.protocols.messages import Role

if TYPE_CHECKING:
    from appliance.node.agent import Agent

__all__ = [
    "VERSION",
    "ControlServer",
    "control_main",
    "default_socket_path",
    "format_status",
    "request",
    "runtime_directory",
    "socket_path",
]

log = logging.getLogger("appliance.control")

VERSION = 1
"""Of the request and reply objects; a request with another version is refused."""
DEFAULT_CONFIG = Path("/etc/appliance/cluster.toml")
MAX_REQUEST = 64 * 1024
STOP_GRACE = 3.0
"""On SIGTERM, how long the agent may spend handing over and leaving before it exits."""
FENCE_ACTIONS = ("off", "on", "cycle")


# -- where the socket lives ----------------------------------------------------------------


def runtime_directory(env: Mapping[str, str] | None = None) -> Path:
    """``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``), else
    ``$XDG_RUNTIME_DIR/appliance``, else ``/run/appliance``."""
    env = os.environ if env is None else env
    systemd = env.get("RUNTIME_DIRECTORY", "")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return Path(xdg) / "appliance"
    return Path("/run/appliance")


def default_socket_path(cluster: str, node: str, env: Mapping[str, str] | None = None) -> Path:
    return runtime_directory(env) / f"{cluster}.{node}.control"


def socket_path(cfg: ClusterConfig, node: NodeConfig, env: Mapping[str, str] | None = None) -> Path:
    """The node's configured ``control_socket``, or its default under the runtime directory."""
    if node.control_socket is not None:
        return node.control_socket
    return default_socket_path(cfg.name, node.name, env)


def _prepare(path: Path) -> None:
    """Create the socket's directory (0750) and clear a stale socket file; refuse to take over
    a socket another agent is still serving."""
    d = path.parent
    if not d.exists():
        d.mkdir(mode=0o750, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_mode & 0o027 and st.st_uid == os.getuid():
        d.chmod(stat.S_IMODE(st.st_mode) & ~0o027)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over from an agent that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another agent is serving this control socket")


# -- replies -------------------------------------------------------------------------------


def _ok(**fields: object) -> dict[str, object]:
    return {"version": VERSION, "ok": True, **fields}


def _error(message: str, **fields: object) -> dict[str, object]:
    return {"version": VERSION, "ok": False, "error": message, **fields}


# -- the server (inside the agent) ---------------------------------------------------------


class ControlServer:
    """The agent's REP socket and the handlers behind it; also its graceful shutdown."""

    def __init__(self, agent: Agent, path: Path) -> None:
        self.agent = agent
        self.path = path
        self.ctx: zmq.asyncio.Context | None = None
        self.sock: zmq.asyncio.Socket | None = None
        self.task: asyncio.Task[None] | None = None
        self.waiters: list[asyncio.Future[HandoverFinished]] = []
        self.stopping: asyncio.Task[None] | None = None
        self.requests = 0
        self.bad_requests = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        _prepare(self.path)
        self.ctx = zmq.asyncio.Context()
        sock = self.ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
        old = os.umask(0o117)  # the file is created 0660, never briefly wider
        try:
            sock.bind(f"ipc://{self.path}")
        except zmq.ZMQError as e:
            sock.close()
            self.ctx.term()
            self.ctx = None
            raise OSError(e.errno, f"{self.path}: {e}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        self.sock = sock
        self.task = asyncio.get_running_loop().create_task(self._serve())
        log.info("control channel on ipc://%s", self.path)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self) -> None:
        assert self.sock is not None
        while True:
            frames = await self.sock.recv_multipart()
            self.requests += 1
            try:
                reply = await self.handle(frames)
            except Exception as e:  # a handler bug must not end the channel
                log.exception("control request failed")
                reply = _error(f"internal error: {e}")
            if not reply["ok"]:
                self.bad_requests += 1
            await self.sock.send(json.dumps(reply).encode())

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, frames: list[bytes]) -> dict[str, object]:
        if len(frames) != 1:
            return _error(f"expected one frame, got {len(frames)}")
        try:
            req = json.loads(frames[0])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return _error(f"request is not JSON: {e}")
        if not isinstance(req, dict):
            return _error("request must be a JSON object")
        if req.get("version") != VERSION:
            return _error(f"unsupported version {req.get('version')!r}; expected {VERSION}")
        kind = req.get("request")
        if kind == "status":
            return self.status()
        if kind == "step-down":
            return await self.step_down()
        if kind == "fence":
            return await self.fence(req.get("node"), req.get("action", "off"))
        return _error(f"unknown request {kind!r}; expected status, step-down or fence")

    def status(self) -> dict[str, object]:
        agent = self.agent
        eng = agent.engine
        now = agent.loop.time()
        s = eng.status()
        names = {n.id: n.name for n in agent.cfg.nodes}
        members = s["members"]
        assert isinstance(members, list)
        delivered, commit = s["delivered"], s["commit"]
        assert isinstance(delivered, int) and isinstance(commit, int)
        peers = []
        for p in eng.peers(now):
            ago = p["last_heard_ago"]
            assert isinstance(ago, float)
            node_id = p["node"]
            assert isinstance(node_id, int)
            peers.append(
                {
                    "id": node_id,
                    "name": names.get(node_id, str(node_id)),
                    "member": node_id in members,
                    "last_heard_ms": round(ago * 1000, 1),
                    "wire": p["wire"],
                    "health": p["health"],
                    "suspicion": p["suspicion"],
                }
            )
        dropped = dict(s["rejected"])  # type: ignore[call-overload]
        dropped.update(
            {
                k: v
                for k, v in (
                    ("stale_view", eng.member.dropped_stale_view),
                    ("receive_error", agent.driver.receive_errors),
                )
                if v
            }
        )
        return _ok(
            node={"name": agent.me.name, "id": agent.me.id, "incarnation": eng.incarnation},
            role=s["role"],
            rank=s["rank"],
            view=s["view"],
            primary=s["primary"],
            members=[{"id": n, "name": names.get(n, str(n))} for n in members],
            handover=s["handover"],
            admission=s["admission"],
            ready=agent.ready,
            replication={
                "delivered": delivered,
                "commit": commit,
                "lag": delivered - commit,
                "log_entries": s["log_entries"],
                "requests_in_flight": s["requests_in_flight"],
                "requests_backlog": s["requests_backlog"],
                "order_stalled": eng.member.order_stalled,
                "learners_adopted": eng.member.adopted,
            },
            peers=peers,
            dropped=dropped,
            accepted=s["accepted"],
            fences=agent.fence_history(),
        )

    def on_event(self, ev: Event) -> None:
        """The agent forwards protocol events; a hand-over's end wakes whoever waits for it."""
        if isinstance(ev, HandoverFinished):
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(ev)

    async def _hand_over(self, timeout: float) -> HandoverFinished | str:
        """Start a hand-over and wait for its end; an error sentence if it could not start or
        did not end in time."""
        agent = self.agent
        waiter: asyncio.Future[HandoverFinished] = agent.loop.create_future()
        self.waiters.append(waiter)
        try:
            successor = agent.engine.step_down(agent.loop.time())
        except ValueError as e:
            self.waiters.remove(waiter)
            return str(e)
        agent.log_event("stepping down: handing over to node %d", successor)
        agent.driver.poke()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return f"the hand-over to node {successor} did not finish within {timeout:.1f} s"
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def _handover_wait(self) -> float:
        pcfg = self.agent.engine.cfg
        return 2 * pcfg.handover_timeout + pcfg.vote_timeout + 1.0

    async def step_down(self) -> dict[str, object]:
        result = await self._hand_over(self._handover_wait())
        if isinstance(result, str):
            return _error(result)
        names = {n.id: n.name for n in self.agent.cfg.nodes}
        successor = result.successor
        fields: dict[str, object] = {
            "successor": {"id": successor, "name": names.get(successor or 0, str(successor))},
            "reason": result.reason,
        }
        if not result.ok:
            return _error(f"the hand-over failed: {result.reason}", **fields)
        return _ok(**fields)

    async def fence(self, node: object, action: object) -> dict[str, object]:
        agent = self.agent
        target = _find_node(agent.cfg, node)
        if target is None:
            known = ", ".join(n.name for n in agent.cfg.nodes)
            return _error(f"unknown node {node!r}; expected one of {known}")
        if action not in FENCE_ACTIONS:
            return _error(f"unknown action {action!r}; expected off, on or cycle")
        if target.id == agent.me.id:
            return _error("a node does not fence itself; ask another node's agent")
        if not target.fence:
            return _error(f"node {target.name} has no fence device")
        agent.log_event("fence %s of node %s requested on the control channel", action, target.name)
        first = "on" if action == "on" else "off"
        dev = await agent.power(target, first)
        if dev is None:
            return _error(f"no fence device of {target.name} could power it {first}")
        if first == "off":
            # The node is off: the protocol may exclude it without fencing it again.
            agent.engine.fence_result(target.id, True, agent.loop.time())
            agent.driver.poke()
        if action == "cycle":
            await asyncio.sleep(target.off_hold)
            if not await agent.power_with(dev, target, "on"):
                return _error(f"{target.name} was powered off but could not be powered on")
        return _ok(node=target.name, action=action, device=dev.kind)

    # -- graceful shutdown ------------------------------------------------------------------

    def on_signal(self, stop: asyncio.Event) -> None:
        """SIGTERM or SIGINT: shut down gracefully; a second signal stops at once."""
        if self.stopping is not None:
            stop.set()
            return

        async def graceful() -> None:
            try:
                await self.shutdown(STOP_GRACE)
            finally:
                stop.set()

        self.stopping = self.agent.loop.create_task(graceful())

    async def shutdown(self, grace: float) -> None:
        """Leave the group without being fenced: a primary with backups hands over first, then
        a member asks to leave and waits until the primary has removed it (bounded)."""
        agent = self.agent
        loop = agent.loop
        deadline = loop.time() + grace
        eng = agent.engine
        view = eng.member.view
        if eng.is_primary and view is not None and view.backups:
            agent.log_event("SIGTERM: handing over before exiting")
            result = await self._hand_over(max(0.1, deadline - loop.time()))
            if isinstance(result, str):
                agent.log_event("hand-over before exit failed: %s", result)
            else:
                outcome = "done" if result.ok else "FAILED"
                agent.log_event("hand-over before exit %s: %s", outcome, result.reason)
        view = eng.member.view
        if eng.role is Role.BACKUP and view is not None and len(view.members) > 1:
            agent.log_event("SIGTERM: leaving the group")
            eng.leave("agent stopping", loop.time())
            agent.driver.poke()
            while not eng.member.departed and loop.time() < deadline:
                await asyncio.sleep(eng.cfg.heartbeat_interval / 2)
            agent.log_event("left the group" if eng.member.departed else "leaving timed out")


def _find_node(cfg: ClusterConfig, node: object) -> NodeConfig | None:
    for n in cfg.nodes:
        if node == n.name or (isinstance(node, int) and node == n.id):
            return n
    return None


# -- the client (the appliance command) ----------------------------------------------------


class ControlError(Exception):
    """The agent could not be asked (not running, no permission, no answer)."""


def request(path: Path, payload: Mapping[str, object], timeout: float) -> dict[str, Any]:
    """One request to the agent at ``path``; raises ControlError when it cannot be had."""
    if not path.exists():
        raise ControlError(f"the agent is not running (no control socket at {path})")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ControlError(f"permission denied on {path} (run as root or as a member of its group)")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{path}")
        sock.send(json.dumps({"version": VERSION, **payload}).encode())
        if not sock.poll(int(timeout * 1000)):
            raise ControlError(
                f"no answer from the agent at {path} within {timeout:g} s (is it running?)"
            )
        reply = json.loads(sock.recv())
    except zmq.ZMQError as e:
        raise ControlError(f"{path}: {e}") from None
    finally:
        sock.close(linger=0)
        ctx.term()
    if not isinstance(reply, dict):
        raise ControlError(f"unexpected reply from the agent: {reply!r}")
    return reply


def _ms(value: object) -> str:
    return f"{value:.0f} ms ago" if isinstance(value, int | float) else "-"


def format_status(s: Mapping[str, Any]) -> str:
    """The human-readable ``appliance status``."""
    node = s["node"]
    lines = [
        f"node {node['name']} (id {node['id']}, incarnation {node['incarnation']})",
        f"  role      {s['role']}"
        + (f" (handing over: {s['handover']})" if s.get("handover") else ""),
        f"  rank      {s['rank'] if s['rank'] is not None else '-'}",
        f"  view      {s['view'] if s['view'] is not None else '-'}",
        "  members   "
        + (
            ", ".join(
                f"{m['name']} ({m['id']}{', primary' if m['id'] == s['primary'] else ''})"
                for m in s["members"]
            )
            or "-"
        ),
    ]
    r = s["replication"]
    lines += [
        f"  delivered {r['delivered']}  commit {r['commit']}  lag {r['lag']} entries",
        f"  requests  {r['requests_in_flight']} in flight, {r['requests_backlog']} queued",
        "",
    ]
    rows = [("PEER", "ID", "MEMBER", "LAST HEARD", "WIRE", "HEALTH", "SUSPICION")]
    for p in s["peers"]:
        rows.append(
            (
                p["name"],
                str(p["id"]),
                "yes" if p["member"] else "no",
                _ms(p["last_heard_ms"]),
                p["wire"],
                p["health"],
                p["suspicion"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    dropped = s["dropped"]
    lines += [
        "",
        "  dropped datagrams  "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none")
        + f"  (accepted {s['accepted']})",
    ]
    fences = s.get("fences") or []
    if fences:
        lines += ["", "  recent fences (newest last)"]
        lines += [f"  {f.get('summary', f)}" for f in fences[-5:]]
    return "\n".join(lines)


def _socket_for(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    try:
        cfg = load_config(args.config)
        node = cfg.node(args.node)
    except ConfigError as e:
        raise ControlError(f"{e} (or name the agent's socket with --socket PATH)") from None
    return socket_path(cfg, node)


def control_main(command: str, argv: list[str]) -> int:
    """``appliance status|step-down|fence``; exit 0 on success, 1 if the agent refused or
    failed, 2 on a usage error or when the agent cannot be reached."""
    p = argparse.ArgumentParser(prog=f"appliance {command}")
    if command == "status":
        p.description = "show this node's view of the cluster"
        p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    elif command == "step-down":
        p.description = "hand the primary role over to the next rank (no fence)"
    else:
        p.description = "power a node off, on, or cycle it with its fence devices"
        p.add_argument("target", metavar="NODE", help="the node to fence (name or id)")
        p.add_argument("--action", choices=FENCE_ACTIONS, default="off")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"default {DEFAULT_CONFIG}")
    p.add_argument("--node", help="whose agent to ask (default: this host's)")
    p.add_argument("--socket", help="the agent's control socket (instead of --config/--node)")
    p.add_argument(
        "--timeout",
        type=float,
        default=3.0 if command == "status" else 30.0,
        help="seconds to wait for the answer",
    )
    args = p.parse_args(argv)
    payload: dict[str, object] = {"request": command}
    if command == "fence":
        target: object = int(args.target) if args.target.isdigit() else args.target
        payload.update(node=target, action=args.action)
    try:
        reply = request(_socket_for(args), payload, args.timeout)
    except ControlError as e:
        print(f"appliance {command}: {e}", file=sys.stderr)
        return 2
    if command == "status" and args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        print(f"appliance {command}: {reply.get('error', reply)}", file=sys.stderr)
        return 1
    if command == "status":
        print(format_status(reply))
    elif command == "step-down":
        succ = reply["successor"]
        print(f"handed over to {succ['name']} (node {succ['id']}): {reply['reason']}")
    else:
        print(f"{reply['node']}: {reply['action']} done ({reply['device']} device)")
    return 0
