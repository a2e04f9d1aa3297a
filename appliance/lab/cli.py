"""``appliance lab ...``: the whole cluster on one machine, with an emulated power strip.

Every node is an agent process on loopback (all share one multicast group, each has its own
client port); the supervisor (``lab up``) runs the power strip the agents fence through. The
other commands act on a running lab through ``lab.json`` in its directory and the strip's HTTP
API, so they work from any terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.lab import netns
from appliance.lab.layout import LabLayout, LabState, NodeState, default_dir
from appliance.lab.probe import node_info, roles_formed
from appliance.lab.supervisor import Supervisor
from appliance.lab.wires import wire_live
from appliance.protocols.replication import Style

__all__ = [
    "LabError",
    "lab_main",
    "run_lab",
    "running_state",
    "signal_node",
    "snapshot",
    "strip_command",
    "switch_outlet",
]

UP_TIMEOUT = 60.0


class LabError(Exception):
    """A lab command that cannot be carried out; the message says why and what to do."""


# -- reading a running lab -----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_state(lab_dir: Path) -> LabState:
    path = lab_dir / "lab.json"
    try:
        state = LabState.read(path)
    except FileNotFoundError:
        raise LabError(f"no lab is running in {lab_dir} (start one: appliance lab up)") from None
    if not _alive(state.supervisor_pid):
        raise LabError(
            f"the lab in {lab_dir} is not running (its supervisor {state.supervisor_pid} is "
            "gone); clean up with: appliance lab down" + _dir_flag(lab_dir)
        )
    return state


def _dir_flag(lab_dir: Path) -> str:
    return "" if lab_dir == default_dir() else f" --dir {lab_dir}"


def strip_command(state: LabState, cmnd: str, timeout: float = 10.0) -> dict[str, Any]:
    url = f"http://{state.strip_host}:{state.strip_port}/cm?" + urllib.parse.urlencode(
        {"cmnd": cmnd}
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError) as e:
        raise LabError(f"the power strip at {url} did not answer: {e}") from None
    return reply


def run_lab(
    lab_dir: Path,
    *args: str,
    check: bool = True,
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``appliance lab ARGS --dir LAB_DIR`` in a fresh interpreter, as a user would.

    For programs that drive a lab the way its users do (``up`` returns only once the lab
    has formed, ``down`` leaves nothing behind). ``check``: a failing command is a
    :class:`LabError` carrying what it printed.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "lab", *args, "--dir", str(lab_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise LabError(f"appliance lab {args[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def snapshot(state: LabState) -> dict[str, Any]:
    """Everything ``lab status`` shows, as the JSON it prints."""
    infos: dict[str, dict[str, str] | None] = {}
    for n in state.nodes:
        alive = n.power == "on" and n.pid is not None and n.exit_code is None
        infos[n.name] = node_info(n.client_port, host=n.address) if alive else None
    powered = {n.name for n in state.nodes if n.power == "on" and n.exit_code is None}
    net = (
        netns.LabNetwork.for_lab(Path(state.dir), [n.name for n in state.nodes])
        if state.mode == "netns"
        else None
    )
    nodes = []
    primary = None
    for n in state.nodes:
        i = infos[n.name] or {}
        role = i.get("llft_role")
        if role == "primary":
            primary = n.name if primary is None else primary
        rejected = {
            k.removeprefix("datagrams_rejected_"): int(v)
            for k, v in i.items()
            if k.startswith("datagrams_rejected_")
        }
        nodes.append(
            {
                "name": n.name,
                "id": n.id,
                "role": role if role else ("off" if n.power == "off" else "unknown"),
                "rank": _int_or_none(i.get("rank")),
                "view": _int_or_none(i.get("view")),
                "members": [int(m) for m in i.get("members", "").split(",") if m],
                "client_host": n.address,
                "client_port": n.client_port,
                "pid": n.pid,
                "power": n.power,
                "exit_code": n.exit_code,
                "network": "up" if net is None or net.link_up(n.name) else "down",
                "wire": _wire(Path(state.dir), n.name),
                "datagrams_rejected": rejected,
            }
        )
    return {
        "dir": state.dir,
        "mode": state.mode,
        "replication": state.replication,
        "multicast_group": state.multicast_group,
        "multicast_port": state.multicast_port,
        "power_strip": f"http://{state.strip_host}:{state.strip_port}",
        "primary": primary,
        "formed": roles_formed(infos, powered) is not None,
        "nodes": nodes,
    }


def _wire(lab_dir: Path, node: str) -> str:
    """The node's emulated heartbeat wire: ``live`` (toggling), ``flat`` or ``none``."""
    live = wire_live(lab_dir / "wires", node)
    return "none" if live is None else ("live" if live else "flat")


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def render(snap: dict[str, Any]) -> str:
    lines = [
        f"lab {snap['dir']}  ({snap['mode']}, {snap['replication']})",
        f"multicast {snap['multicast_group']}:{snap['multicast_port']}  "
        f"power strip {snap['power_strip']}  primary {snap['primary'] or '-'}",
        "",
        f"{'NODE':<6}{'ROLE':<10}{'RANK':>5}{'VIEW':>6}  {'CLIENT':<22}{'PID':>8}  "
        f"{'POWER':<6}{'NET':<5}{'WIRE':<6}REJECTED",
    ]
    for n in snap["nodes"]:
        rejected = ",".join(f"{k}={v}" for k, v in sorted(n["datagrams_rejected"].items()))
        role = n["role"] if n["exit_code"] is None else f"exit {n['exit_code']}"
        lines.append(
            f"{n['name']:<6}{role:<10}{_dash(n['rank']):>5}{_dash(n['view']):>6}  "
            f"{n['client_host'] + ':' + str(n['client_port']):<22}{_dash(n['pid']):>8}  "
            f"{n['power']:<6}{n['network']:<5}{n['wire']:<6}{rejected or '-'}"
        )
    return "\n".join(lines)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def wait_formed(lab_dir: Path, timeout: float, supervisor: subprocess.Popen[bytes] | None) -> str:
    """Wait until a primary serves and every powered node has joined; its name."""
    deadline = time.monotonic() + timeout
    while True:
        if supervisor is not None and supervisor.poll() is not None:
            raise LabError(
                f"the lab supervisor exited with status {supervisor.returncode}:\n"
                + _tail(lab_dir / "lab.log")
            )
        try:
            state = LabState.read(lab_dir / "lab.json")
        except (FileNotFoundError, ValueError):
            state = None
        if state is not None:
            snap = snapshot(state)
            if snap["formed"] and snap["primary"] is not None:
                return str(snap["primary"])
        if time.monotonic() > deadline:
            logs = "\n".join(_tail(p) for p in sorted(lab_dir.glob("n*.log")))
            raise LabError(f"the lab did not form within {timeout:.0f} s:\n{logs}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"({path} missing)"
    return f"--- {path.name} ---\n" + "\n".join(text)


# -- the commands --------------------------------------------------------------------------


def _layout(args: argparse.Namespace) -> LabLayout:
    return LabLayout.derive(
        args.dir, args.nodes, Style(args.replication), netns=getattr(args, "netns", False)
    )


def _command_name() -> str:
    """How the user can run this command: ``appliance`` if on PATH, else the venv's script."""
    script = Path(sys.executable).parent / "appliance"
    if shutil.which("appliance") == str(script) or not script.exists():
        return "appliance"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _connect_hint(state: LabState, primary: str, foreground: bool = False) -> str:
    me = _command_name()
    first = state.nodes[0]
    flag = _dir_flag(Path(state.dir))
    ports = ", ".join(f"{n.name}={n.client_port}" for n in state.nodes)
    host = "" if first.address == "127.0.0.1" else f"-h {first.address} "
    rows = [
        (f"redis-cli {host}-p {first.client_port}", f"talk to {first.name} (any node serves)"),
        (f"{me} lab status{flag}", "who is primary, from another terminal"),
        (f"{me} lab pull-power {primary}{flag}", "pull the primary's plug"),
        (f"{me} lab freeze {primary}{flag}", "or freeze it (SIGSTOP: a timing fault)"),
        ("Ctrl-C" if foreground else f"{me} lab down{flag}", "stop everything"),
    ]
    width = max(len(c) for c, _ in rows) + 2
    return f"lab up: {len(state.nodes)} nodes, primary {primary}; client ports {ports}\n" + (
        "\n".join(f"  {c:<{width}}# {why}" for c, why in rows)
    )


def cmd_up(args: argparse.Namespace) -> int:
    if args.netns and (why := netns.available()) is not None:
        raise LabError(why)
    lab_dir: Path = args.dir
    try:
        running_state(lab_dir)
    except LabError:
        pass
    else:
        raise LabError(
            f"a lab is already running in {lab_dir}; stop it first: appliance lab down"
            + _dir_flag(lab_dir)
        )
    layout = _layout(args)
    layout.dir.mkdir(parents=True, exist_ok=True)
    if args.foreground:
        return _foreground(layout, args.timeout)
    with open(layout.dir / "lab.log", "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "lab",
                "_supervise",
                "--dir",
                str(layout.dir),
                "--nodes",
                str(layout.nodes),
                "--replication",
                layout.replication.value,
                *(["--netns"] if layout.network is not None else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        primary = wait_formed(layout.dir, args.timeout, proc)
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        raise
    if not getattr(args, "quiet", False):
        print(_connect_hint(LabState.read(layout.state_path), primary))
    return 0


def _foreground(layout: LabLayout, timeout: float) -> int:
    sup = Supervisor(layout)
    try:
        sup.start()
        primary = wait_formed(layout.dir, timeout, None)
        state = LabState.read(layout.state_path)
        print(_connect_hint(state, primary, foreground=True))
        print("\nlive status (Ctrl-C stops every node):\n", flush=True)
        last = ""
        while True:
            text = render(snapshot(LabState.read(layout.state_path)))
            if text != last:
                print(time.strftime("%H:%M:%S ") + text.replace("\n", "\n         ") + "\n")
                sys.stdout.flush()
                last = text
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping the lab...")
    finally:
        sup.shutdown()
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return Supervisor(_layout(args)).run()


def cmd_status(args: argparse.Namespace) -> int:
    snap = snapshot(running_state(args.dir))
    print(json.dumps(snap, indent=2) if args.json else render(snap))
    return 0


def switch_outlet(state: LabState, node: str, on: bool) -> NodeState:
    """Switch ``node``'s outlet on the lab's power strip; returns once the strip confirms.

    The strip answers only when the switch is done (off: the node's processes are gone), so
    a reply other than the state asked for means the outlet did not switch.
    """
    n = state.node(node)
    word = "On" if on else "Off"
    reply = strip_command(state, f"Power{n.id} {word}")
    if reply.get(f"POWER{n.id}") != word.upper():
        raise LabError(f"the power strip answered {reply} to Power{n.id} {word}")
    return n


def _switch(args: argparse.Namespace, on: bool) -> int:
    node = switch_outlet(running_state(args.dir), args.node, on)
    print(f"{node.name}: power {'on' if on else 'off'}")
    return 0


def cmd_pull_power(args: argparse.Namespace) -> int:
    return _switch(args, False)


def cmd_power_on(args: argparse.Namespace) -> int:
    return _switch(args, True)


def signal_node(state: LabState, node: str, sig: signal.Signals) -> NodeState:
    """Send ``sig`` to ``node``'s agent and everything it started (its process group).

    A node without a running agent (powered off, or its agent gone) is a :class:`LabError`.
    """
    n = state.node(node)
    if n.pid is None or n.power == "off":
        raise LabError(f"{n.name} is powered off")
    try:
        os.killpg(n.pid, sig)
    except ProcessLookupError:
        raise LabError(f"{n.name}'s agent (pid {n.pid}) is not running") from None
    return n


def _signal(args: argparse.Namespace, sig: signal.Signals, what: str) -> int:
    node = signal_node(running_state(args.dir), args.node, sig)
    print(f"{node.name}: {what} (pid {node.pid})")
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    return _signal(args, signal.SIGSTOP, "frozen")


def cmd_thaw(args: argparse.Namespace) -> int:
    return _signal(args, signal.SIGCONT, "thawed")


def cmd_down(args: argparse.Namespace) -> int:
    lab_dir: Path = args.dir
    try:
        state = LabState.read(lab_dir / "lab.json")
    except FileNotFoundError:
        print(f"no lab running in {lab_dir}")
        return 0
    pids = [n.pid for n in state.nodes if n.pid is not None]
    if _alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(state.supervisor_pid):
            os.kill(state.supervisor_pid, signal.SIGKILL)
    for pid in pids:  # normally gone with the supervisor; a leftover never survives down
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    if state.mode == "netns":  # normally removed by the supervisor; never left behind
        netns.LabNetwork.for_lab(lab_dir, [n.name for n in state.nodes]).teardown()
    (lab_dir / "lab.json").unlink(missing_ok=True)
    print(f"lab in {lab_dir}: stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.lab.demo import report, run_demo

    args.foreground = False
    args.timeout = UP_TIMEOUT
    args.quiet = True
    print(f"starting a {args.nodes}-node lab in {args.dir} ...", flush=True)
    cmd_up(args)
    try:
        state = running_state(args.dir)
        snap = snapshot(state)
        result = run_demo(args.dir, state, str(snap["primary"]), network=args.netns)
        print(report(result), flush=True)
    finally:
        cmd_down(args)
    return 0 if result.ok else 1


def cmd_torture(args: argparse.Namespace) -> int:
    from appliance.lab.torture.cli import torture

    return torture(args)


def _network(args: argparse.Namespace) -> tuple[LabState, netns.LabNetwork]:
    state = running_state(args.dir)
    if state.mode != "netns":
        raise LabError(
            f"lab {args.command} needs a lab whose nodes have their own network namespaces: "
            "appliance lab down, then appliance lab up --netns (as root)"
        )
    return state, netns.LabNetwork.for_lab(args.dir, [n.name for n in state.nodes])


def cmd_pull_network(args: argparse.Namespace) -> int:
    state, net = _network(args)
    net.link(state.node(args.node).name, False)
    print(f"{args.node}: network cable pulled")
    return 0


def cmd_plug_network(args: argparse.Namespace) -> int:
    state, net = _network(args)
    net.link(state.node(args.node).name, True)
    print(f"{args.node}: network cable plugged in")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    state, net = _network(args)
    groups = [[n for n in g.split(",") if n] for g in args.groups]
    listed = {n for g in groups for n in g}
    rest = [n.name for n in state.nodes if n.name not in listed]
    if rest:
        groups.append(rest)  # the nodes not named form a side of their own
    if len(groups) < 2:
        raise LabError("partition needs at least two sides, e.g.: appliance lab partition n1 n2,n3")
    net.partition(groups)
    print("partitioned: " + " | ".join(",".join(g) for g in groups))
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    _, net = _network(args)
    net.heal()
    print("healed: no partition, no loss, every cable plugged in")
    return 0


def cmd_loss(args: argparse.Namespace) -> int:
    _, net = _network(args)
    net.loss(args.percent)
    print(f"every node now drops {args.percent:g}% of what it receives")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance lab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, help: str, node: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--dir", type=Path, default=default_dir(), help="the lab's directory")
        if node:
            sp.add_argument("node", help="node name, e.g. n1")
        sp.set_defaults(fn=fn)
        return sp

    up = add("up", cmd_up, "start a lab; returns once a primary serves and every node joined")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--netns", action="store_true", help="nodes in network namespaces (root)")
    up.add_argument(
        "--replication", choices=[s.value for s in Style], default=Style.SEMI_ACTIVE.value
    )
    up.add_argument("--foreground", action="store_true", help="stay, show status, Ctrl-C stops")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT, help=argparse.SUPPRESS)
    sv = add("_supervise", cmd_supervise, "the lab's supervisor (started by up)")
    sv.add_argument("--nodes", type=int, default=3)
    sv.add_argument("--replication", default=Style.SEMI_ACTIVE.value)
    sv.add_argument("--netns", action="store_true")
    st = add("status", cmd_status, "every node's role, view, port, pid, power and rejects")
    st.add_argument("--json", action="store_true")
    add("pull-power", cmd_pull_power, "cut a node's power (SIGKILL, no goodbye)", node=True)
    add("power-on", cmd_power_on, "power a node on again (its agent starts)", node=True)
    add("freeze", cmd_freeze, "SIGSTOP a node's agent (a timing fault)", node=True)
    add("thaw", cmd_thaw, "SIGCONT a frozen node's agent", node=True)
    add("down", cmd_down, "stop the lab and everything in it")
    demo = add("demo", cmd_demo, "scripted failover demonstration (what make demo runs)")
    demo.set_defaults(dir=default_dir().with_name(default_dir().name + "-demo"))
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--netns", action="store_true", help="pull the network cable instead")
    demo.add_argument(
        "--replication", choices=[s.value for s in Style], default=Style.SEMI_ACTIVE.value
    )
    from appliance.lab.torture.cli import add_arguments

    add_arguments(add("torture", cmd_torture, "a seeded fault run with clients and checkers"))
    add("pull-network", cmd_pull_network, "pull a node's network cable (netns)", node=True)
    add("plug-network", cmd_plug_network, "plug it back in (netns)", node=True)
    part = add("partition", cmd_partition, "split the network, e.g. partition n1 n2,n3 (netns)")
    part.add_argument("groups", nargs="+", help="comma-separated nodes of each side")
    add("heal", cmd_heal, "undo partitions, loss and pulled cables (netns)")
    loss = add("loss", cmd_loss, "drop PERCENT of every node's input, 0 to stop (netns)")
    loss.add_argument("percent", type=float)
    return p


def lab_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except (LabError, KeyError, OSError, ValueError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"appliance lab {args.command}: {text}", file=sys.stderr)
        return 1
    return code
