"""The local control channel on a real zmq ipc socket, in front of a real protocol engine.

The agent around the server is a stand-in (engine, loop, configuration, a fence recorder), so
these tests cover the socket, the requests and replies, the permissions and the command line;
``tests/node/test_step_down.py`` runs the whole agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio

from appliance.node.config import ClusterConfig, CommandFence, NodeConfig, parse_config
from appliance.node.control import (
    VERSION,
    ControlError,
    ControlServer,
    control_main,
    default_socket_path,
    format_status,
    request,
    runtime_directory,
    socket_path,
)
from appliance.protocols.engine import NodeEngine
from appliance.protocols.messages import Role

T = TypeVar("T")


def cluster_config(nodes: int = 2) -> ClusterConfig:
    fence = [{"type": "command", "argv": ["/bin/true"]}]
    return parse_config(
        {
            "cluster": {"name": "ctl"},
            "nodes": [
                {
                    "name": f"n{i}",
                    "id": i,
                    "address": f"127.0.0.{i}",
                    "fence": fence,
                    "off_hold_ms": 10,
                }
                for i in range(1, nodes + 1)
            ],
        }
    )


@dataclass
class FakeDriver:
    pokes: int = 0
    receive_errors: int = 0

    def poke(self) -> None:
        self.pokes += 1


@dataclass
class FakeAgent:
    """What the control server uses of the agent."""

    cfg: ClusterConfig
    me: NodeConfig
    engine: NodeEngine
    loop: asyncio.AbstractEventLoop
    driver: FakeDriver = field(default_factory=FakeDriver)
    ready: bool = True
    powered: list[tuple[str, str]] = field(default_factory=list)
    power_ok: bool = True
    logged: list[str] = field(default_factory=list)

    def log_event(self, what: str, *args: object) -> None:
        self.logged.append(what % args)

    def fence_history(self) -> list[dict[str, object]]:
        return [{"target": "n2", "result": "fenced", "summary": "fence of n2 by n1: fenced"}]

    async def power(self, target: NodeConfig, action: str) -> CommandFence | None:
        dev = target.fence[0]
        assert isinstance(dev, CommandFence)
        return dev if await self.power_with(dev, target, action) else None

    async def power_with(self, dev: CommandFence, target: NodeConfig, action: str) -> bool:
        self.powered.append((target.name, action))
        return self.power_ok


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to ~107 bytes: keep them short."""
    with tempfile.TemporaryDirectory(prefix="ctl-", dir="/tmp") as d:
        yield Path(d)


def run_server(
    path: Path, body: Callable[[ControlServer, FakeAgent], Awaitable[T]], nodes: int = 2
) -> T:
    async def main() -> T:
        cfg = cluster_config(nodes)
        loop = asyncio.get_running_loop()
        engine = NodeEngine(cfg.protocol_config(b"k" * 32), 1, 7, loop.time())
        agent = FakeAgent(cfg, cfg.nodes[0], engine, loop)
        server = ControlServer(agent, path)  # type: ignore[arg-type]
        await server.start()
        try:
            return await body(server, agent)
        finally:
            await server.close()

    return asyncio.run(main())


async def ask(path: Path, payload: dict[str, object], timeout: float = 5.0) -> dict[str, Any]:
    """The real (blocking) client, off the event loop the server runs on."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, request, path, payload, timeout)


async def raw(path: Path, frames: list[bytes]) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.connect(f"ipc://{path}")
        await sock.send_multipart(frames)
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(sock.recv(), 5))
        return reply
    finally:
        sock.close(linger=0)
        ctx.term()


def test_status_reports_the_engines_view(short_dir: Path) -> None:
    path = short_dir / "run" / "ctl.n1.control"

    async def body(server: ControlServer, agent: FakeAgent) -> dict[str, Any]:
        return await ask(path, {"request": "status"})

    s = run_server(path, body)
    assert s["version"] == VERSION and s["ok"] is True
    assert s["node"] == {"name": "n1", "id": 1, "incarnation": 7}
    assert s["role"] == "joining" and s["rank"] is None and s["view"] is None
    assert s["members"] == [] and s["handover"] is None
    assert s["fences"][0]["target"] == "n2" and "fenced" in format_status(s)
    assert set(s["replication"]) >= {
        "delivered",
        "commit",
        "lag",
        "requests_in_flight",
        "requests_backlog",
    }
    (peer,) = s["peers"]
    assert peer["id"] == 2 and peer["name"] == "n2" and peer["member"] is False
    assert peer["wire"] == "unknown" and peer["health"] in ("alive", "silent")
    assert isinstance(peer["last_heard_ms"], float)
    assert isinstance(s["dropped"], dict) and isinstance(s["accepted"], int)
    text = format_status(s)
    assert "node n1 (id 1, incarnation 7)" in text
    assert "PEER" in text and "LAST HEARD" in text and "unknown" in text
    assert "dropped datagrams  none" in text


def test_bad_requests_get_an_error_and_the_server_keeps_serving(short_dir: Path) -> None:
    path = short_dir / "c.sock"

    async def body(server: ControlServer, agent: FakeAgent) -> list[dict[str, Any]]:
        replies = [
            await raw(path, [b"not json"]),
            await raw(path, [b"[1, 2]"]),
            await raw(path, [json.dumps({"request": "status"}).encode()]),
            await raw(path, [json.dumps({"version": 99, "request": "status"}).encode()]),
            await raw(path, [b"{}", b"{}"]),
            await ask(path, {"request": "reboot"}),
            await ask(path, {"request": "fence", "node": "n9"}),
            await ask(path, {"request": "fence", "node": "n2", "action": "explode"}),
            await ask(path, {"request": "fence", "node": "n1"}),
            await ask(path, {"request": "step-down"}),
            await ask(path, {"request": "status"}),
        ]
        assert server.bad_requests == len(replies) - 1
        return replies

    *errors, last = run_server(path, body)
    assert all(r["ok"] is False and r["version"] == VERSION for r in errors)
    messages = [r["error"] for r in errors]
    assert "not JSON" in messages[0]
    assert "JSON object" in messages[1]
    assert "version" in messages[2] and "version" in messages[3]
    assert "one frame" in messages[4]
    assert "unknown request 'reboot'" in messages[5]
    assert "unknown node 'n9'" in messages[6]
    assert "unknown action 'explode'" in messages[7]
    assert "does not fence itself" in messages[8]
    assert "not the primary" in messages[9]
    assert last["ok"] is True


def test_socket_and_directory_permissions(short_dir: Path) -> None:
    path = short_dir / "rt" / "ctl.n1.control"

    async def body(server: ControlServer, agent: FakeAgent) -> tuple[int, int]:
        return os.stat(path).st_mode, os.stat(path.parent).st_mode

    sock_mode, dir_mode = run_server(path, body)
    assert stat.S_ISSOCK(sock_mode)
    assert stat.S_IMODE(sock_mode) == 0o660
    assert stat.S_IMODE(dir_mode) & 0o027 == 0
    assert not path.exists(), "the socket file is removed on close"


def test_an_existing_directory_is_tightened(short_dir: Path) -> None:
    d = short_dir / "wide"
    d.mkdir()
    d.chmod(0o777)

    async def body(server: ControlServer, agent: FakeAgent) -> int:
        return stat.S_IMODE(os.stat(d).st_mode)

    assert run_server(d / "s", body) & 0o027 == 0


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: an agent that died

    async def body(server: ControlServer, agent: FakeAgent) -> None:
        second = ControlServer(agent, path)  # type: ignore[arg-type]
        with pytest.raises(OSError, match="another agent"):
            await second.start()
        assert (await ask(path, {"request": "status"}))["ok"]

    run_server(path, body)


def test_fence_calls_the_agents_fencing_and_tells_the_engine(short_dir: Path) -> None:
    path = short_dir / "f.sock"

    async def body(server: ControlServer, agent: FakeAgent) -> list[dict[str, Any]]:
        out = [
            await ask(path, {"request": "fence", "node": "n2"}),
            await ask(path, {"request": "fence", "node": 2, "action": "on"}),
        ]
        out.append(await ask(path, {"request": "fence", "node": "n2", "action": "cycle"}))
        agent.power_ok = False
        out.append(await ask(path, {"request": "fence", "node": "n2"}))
        assert 2 in agent.engine.member.fenced
        assert agent.powered == [
            ("n2", "off"),
            ("n2", "on"),
            ("n2", "off"),
            ("n2", "on"),
            ("n2", "off"),
        ]
        return out

    off, on, cycle, failed = run_server(path, body)
    assert off == {
        "version": VERSION,
        "ok": True,
        "node": "n2",
        "action": "off",
        "device": "command",
    }
    assert on["ok"] and on["action"] == "on"
    assert cycle["ok"] and cycle["action"] == "cycle"
    assert not failed["ok"] and "could power it off" in failed["error"]


def test_step_down_alone_is_refused_with_a_clear_error(short_dir: Path) -> None:
    path = short_dir / "one.sock"

    async def body(server: ControlServer, agent: FakeAgent) -> dict[str, Any]:
        eng = agent.engine
        eng.member._found(agent.loop.time())  # a group of one
        assert eng.role is Role.PRIMARY
        return await ask(path, {"request": "step-down"})

    reply = run_server(path, body, nodes=1)
    assert reply["ok"] is False and "no backup" in reply["error"]


def test_client_says_when_the_agent_is_not_running(short_dir: Path) -> None:
    with pytest.raises(ControlError, match="not running"):
        request(short_dir / "absent.sock", {"request": "status"}, 1.0)
    path = short_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    with pytest.raises(ControlError, match=r"no answer .* within 0.2 s"):
        request(path, {"request": "status"}, 0.2)


def test_cli_exit_codes_and_output(
    short_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert control_main("status", ["--socket", str(short_dir / "none")]) == 2
    assert "not running" in capsys.readouterr().err
    assert control_main("status", ["--config", str(tmp_path / "missing.toml")]) == 2
    assert "--socket" in capsys.readouterr().err
    path = short_dir / "cli.sock"

    async def body(server: ControlServer, agent: FakeAgent) -> list[int]:
        loop = asyncio.get_running_loop()
        codes = []
        for argv in (["status"], ["status", "--json"], ["step-down"], ["fence", "n2"]):
            cmd, rest = argv[0], [*argv[1:], "--socket", str(path)]
            if cmd == "fence":
                cmd, rest = "fence", ["n2", "--socket", str(path)]
            codes.append(await loop.run_in_executor(None, control_main, cmd, rest))
        return codes

    assert run_server(path, body) == [0, 0, 1, 0]
    out, err = capsys.readouterr()
    assert "node n1 (id 1, incarnation 7)" in out
    assert '"role": "joining"' in out
    assert "n2: off done (command device)" in out
    assert "appliance step-down: this node is not the primary" in err


def test_socket_path_defaults_under_the_runtime_directory() -> None:
    assert runtime_directory({"RUNTIME_DIRECTORY": "/run/appliance:/run/x"}) == Path(
        "/run/appliance"
    )
    assert runtime_directory({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/appliance"
    )
    assert runtime_directory({}) == Path("/run/appliance")
    cfg = cluster_config()
    assert socket_path(cfg, cfg.nodes[0], {}) == Path("/run/appliance/ctl.n1.control")
    assert default_socket_path("c", "n", {"XDG_RUNTIME_DIR": "/x"}) == Path(
        "/x/appliance/c.n.control"
    )
