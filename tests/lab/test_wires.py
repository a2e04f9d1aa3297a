"""The lab's heartbeat wires: one node's output pin seen by another node's input pin."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.hw.heartbeat import HeartbeatOut, WireChange, WireInputs
from appliance.lab.wires import LabPinFactory, wire_live
from appliance.node.config import NodeConfig, load_config
from appliance.protocols.failure_detector import WireState


def two_nodes(tmp_path: Path) -> tuple[NodeConfig, NodeConfig]:
    cfg_text = """
[cluster]
name = "wires"
[[nodes]]
name = "a"
id = 1
address = "127.0.0.1"
client_port = 7001
heartbeat_out_pin = 4
heartbeat_in = { b = 6 }
fence = [{ type = "command", argv = ["/bin/true"] }]
[[nodes]]
name = "b"
id = 2
address = "127.0.0.1"
client_port = 7002
heartbeat_out_pin = 4
heartbeat_in = { a = 5 }
fence = [{ type = "command", argv = ["/bin/true"] }]
"""
    path = tmp_path / "c.toml"
    path.write_text(cfg_text)
    cfg = load_config(path)
    return cfg.node("a"), cfg.node("b")


def test_a_wire_joins_two_factories_and_goes_flat_when_the_sender_stops(tmp_path: Path) -> None:
    a, b = two_nodes(tmp_path)
    wires = tmp_path / "wires"

    async def main() -> list[WireChange]:
        seen: list[WireChange] = []
        out = HeartbeatOut(4, 0.01, pin_factory=LabPinFactory(wires, a))
        inputs = WireInputs(
            b.heartbeat_in,
            toggle=0.01,
            flat_after=0.05,
            pin_factory=LabPinFactory(wires, b),
            on_change=seen.append,
        )
        out.start()
        inputs.start()
        deadline = asyncio.get_running_loop().time() + 5
        while inputs.state("a") is not WireState.ALIVE:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert wire_live(wires, "a")
        out.stop()  # the node died: its wire stays at its last level
        while inputs.state("a") is not WireState.FLAT:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        inputs.close()
        out.close()
        return seen

    seen = asyncio.run(main())
    assert [c.state for c in seen] == [WireState.ALIVE, WireState.FLAT]
    assert wire_live(wires, "b") is None  # b's output was never opened
