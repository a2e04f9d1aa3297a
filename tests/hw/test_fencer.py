"""The Fencer: fencing levels, confirm-off, the wire proof, power-cycle timing, the health check.

Devices are real: relay channels on MockFactory pins, Tasmota and Shelly plugs served over HTTP
on 127.0.0.1, command devices running a script. The fenced neighbour is emulated where the wire
proof needs it: its heartbeat output is wired (MockConnectedPin) to this node's input pin, and
a relay pin that "cuts its power" stops its heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockConnectedPin, MockFactory, MockPin

from appliance.hw.fencer import (
    AttemptResult,
    Fencer,
    FenceRecord,
    FenceResult,
    HealthCheck,
    PowerOn,
    WireProof,
    tcp_reachable,
)
from appliance.hw.heartbeat import HeartbeatOut, WireInputs
from appliance.hw.power import CommandDevice, PowerDevice, RelayDevice, ShellyDevice, TasmotaDevice
from appliance.node.config import (
    ClusterConfig,
    CommandFence,
    GpioRelayFence,
    ShellyFence,
    TasmotaFence,
    loads_config,
)
from appliance.protocols.failure_detector import WireState
from tests.hw.plugs import PlugState, plug_server
from tests.hw.support import run, until


def cluster(
    action: str = "power-cycle", off_hold_ms: int = 100, relay: bool = False
) -> ClusterConfig:
    pi1_fence = (
        '{ type = "gpio-relay", pin = 23, driven_by = "pi2" }, ' if relay else ""
    ) + '{ type = "command", argv = ["/bin/true"] }'
    text = f"""
[cluster]
name = "hw-test"
[[nodes]]
name = "pi1"
id = 1
address = "127.0.0.1"
client_port = 7001
heartbeat_out_pin = 17
fence = [{pi1_fence}]
fence_action = "{action}"
off_hold_ms = {off_hold_ms}
[[nodes]]
name = "pi2"
id = 2
address = "127.0.0.1"
client_port = 7002
heartbeat_out_pin = 17
heartbeat_in = {{ pi1 = 27, pi3 = 22 }}
fence = [{{ type = "command", argv = ["/bin/true"] }}]
fence_action = "{action}"
off_hold_ms = {off_hold_ms}
[[nodes]]
name = "pi3"
id = 3
address = "127.0.0.1"
client_port = 7003
heartbeat_out_pin = 17
fence = [{{ type = "command", argv = ["/bin/true"] }}]
"""
    return loads_config(text)


def fencer(
    cfg: ClusterConfig, devices: dict[str, list[PowerDevice]], me: str = "pi2", **kw: Any
) -> Fencer:
    return Fencer(cfg, cfg.node(me), devices=devices, **kw)


MARK = """\
import pathlib, sys
pathlib.Path(sys.argv[1]).joinpath(sys.argv[-1]).write_text(sys.argv[-2])
sys.exit(int(sys.argv[2]))
"""


def marker(tmp_path: Path, code: int = 0, name: str = "m") -> CommandDevice:
    """A command device that leaves a file named after each action it was asked for."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    script = tmp_path / "mark.py"
    script.write_text(MARK)
    return CommandDevice("pi1", CommandFence((sys.executable, str(script), str(d), str(code))))


# -- fencing levels ------------------------------------------------------------------------


def test_first_level_that_fences_wins(tmp_path: Path) -> None:
    cfg = cluster(action="off")
    with plug_server(PlugState(lie=True)) as (url, st):
        lying = TasmotaDevice("pi1", TasmotaFence(url=url))
        good, never = marker(tmp_path, name="good"), marker(tmp_path, name="never")
        f = fencer(cfg, {"pi1": [lying, good, never]})
        record = run(f.fence("pi1"))
    assert record.ok and record.result is FenceResult.FENCED
    assert record.device == good.description
    assert [a.result for a in record.attempts] == [AttemptResult.FAILED, AttemptResult.FENCED]
    assert "answered ON to Power Off" in (record.attempts[0].error or "")
    assert (tmp_path / "good" / "off").exists()
    assert not (tmp_path / "never").joinpath("off").exists()
    assert record.power_on is PowerOn.NOT_NEEDED
    assert st.paths == ["/cm?cmnd=Power%20Off"]
    json.dumps(record.as_dict())
    assert "fenced via command" in record.describe()


def test_every_level_failing_is_a_failed_fence(tmp_path: Path) -> None:
    cfg = cluster()
    with plug_server(PlugState(delay=30)) as (url, _):
        slow = TasmotaDevice("pi1", TasmotaFence(url=url, timeout=0.2))
        broken = marker(tmp_path, code=1)
        records: list[FenceRecord] = []
        f = fencer(cfg, {"pi1": [slow, broken]}, on_record=records.append)
        record = run(f.fence("pi1"))
    assert not record.ok and record.result is FenceResult.FAILED
    assert record.device is None and record.power_on is PowerOn.NOT_NEEDED
    assert "timed out" in (record.error or "") and "exit status 1" in (record.error or "")
    assert records == [record] and list(f.records) == [record]


def test_no_device_is_a_failed_fence() -> None:
    record = run(fencer(cluster(), {"pi1": []}).fence("pi1"))
    assert record.result is FenceResult.FAILED and record.error == "no fence device configured"


def test_a_device_that_still_says_on_fails_its_level(tmp_path: Path) -> None:
    cfg = cluster(action="off")
    with plug_server(PlugState(outlets={0: True}, lie=True)) as (url, _):
        shelly = ShellyDevice("pi1", ShellyFence(url=url, timeout=0.3))
        record = run(fencer(cfg, {"pi1": [shelly]}).fence("pi1"))
    assert record.result is FenceResult.FAILED
    assert record.attempts[0].error == "the device still reports ON after off"


def test_relays_come_from_the_configuration(factory: MockFactory, tmp_path: Path) -> None:
    cfg = cluster(action="off", relay=True)
    driver = Fencer(cfg, cfg.node("pi2"), pin_factory=factory)
    relay = factory.pin(23)
    assert relay.state is True, "the driving node keeps its neighbour powered from the start"
    record = run(driver.fence("pi1"))
    assert record.ok and record.device is not None and record.device.startswith("gpio-relay")
    assert relay.state is False
    driver.close()
    # on another node the same relay channel is skipped, and the next level fences
    other = Fencer(cfg, cfg.node("pi3"), pin_factory=factory)
    record = run(other.fence("pi1"))
    assert [a.result for a in record.attempts] == [AttemptResult.SKIPPED, AttemptResult.FENCED]
    assert "is on pi2" in (record.attempts[0].error or "")
    other.close()


# -- power-cycle ---------------------------------------------------------------------------


def test_power_cycle_verdict_first_then_power_on_after_the_hold() -> None:
    hold = 0.3
    cfg = cluster(off_hold_ms=int(hold * 1000))
    with plug_server() as (url, st):
        plug = TasmotaDevice("pi1", TasmotaFence(url=url))
        finals: list[FenceRecord] = []

        async def main() -> tuple[FenceRecord, float, float]:
            f = fencer(cfg, {"pi1": [plug]}, on_record=finals.append)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            verdict = await f.fence("pi1")
            t_verdict = loop.time() - t0
            assert st.outlets[1] is False
            again = await f.fence("pi1")  # during the hold: still fenced, nothing sent
            assert again is verdict
            await until(lambda: bool(finals))
            t_on = loop.time() - t0
            await f.aclose()
            return verdict, t_verdict, t_on

        verdict, t_verdict, t_on = run(main())
    assert verdict.ok and verdict.power_on is PowerOn.PENDING
    assert t_verdict < hold, "the protocol hears the verdict before the power comes back"
    final = finals[0]
    assert final.result is FenceResult.FENCED and final.power_on is PowerOn.DONE
    assert final.off_seconds is not None and final.off_seconds >= hold
    assert t_on >= hold
    assert st.outlets[1] is True
    assert st.paths == ["/cm?cmnd=Power%20Off", "/cm?cmnd=Power", "/cm?cmnd=Power%20On"]
    assert "power-on done" in final.describe()


def test_power_on_failure_is_recorded_not_hidden(tmp_path: Path) -> None:
    cfg = cluster(off_hold_ms=10)
    dev = CommandDevice(
        "pi1",
        CommandFence(
            (sys.executable, "-c", "import sys; sys.exit(sys.argv[-1] == 'on')"),
        ),
    )
    finals: list[FenceRecord] = []

    async def main() -> FenceRecord:
        f = fencer(cfg, {"pi1": [dev]}, on_record=finals.append)
        verdict = await f.fence("pi1")
        await f.aclose()
        return verdict

    assert run(main()).ok
    assert finals[0].power_on is PowerOn.FAILED
    assert "exit status 1" in (finals[0].power_on_error or "")


def test_concurrent_requests_share_one_fence() -> None:
    cfg = cluster(action="off")
    with plug_server() as (url, st):
        plug = TasmotaDevice("pi1", TasmotaFence(url=url))

        async def main() -> list[FenceRecord]:
            f = fencer(cfg, {"pi1": [plug]})
            return list(await asyncio.gather(f.fence("pi1"), f.fence("pi1"), f.fence("pi1")))

        records = run(main())
    assert all(r is records[0] for r in records) and records[0].ok
    assert st.paths.count("/cm?cmnd=Power%20Off") == 1


# -- the wire proof ------------------------------------------------------------------------


class PowerPin(MockPin):
    """A relay pin that powers an emulated neighbour: its level is the neighbour's power."""

    def __init__(self, factory: Any, info: Any, on_level: Callable[[bool], None]) -> None:
        super().__init__(factory, info)
        self.on_level = on_level

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed:
            self.on_level(bool(value))
        return changed


class Neighbour:
    """pi1, as seen by pi2: its heartbeat wire (out pin 17 -> pi2's input pin 27), powered by
    whichever relay pins are connected to it."""

    def __init__(self, factory: MockFactory) -> None:
        inp = factory.pin(27)
        factory.pin(17, pin_class=MockConnectedPin, input_pin=inp)
        self.out = HeartbeatOut(17, 0.005, pin_factory=factory)
        self.wires = WireInputs({"pi1": 27}, toggle=0.005, flat_after=0.03, pin_factory=factory)

    def power(self, on: bool) -> None:
        if on:
            self.out.start()
        else:
            self.out.stop()

    def close(self) -> None:
        self.out.close()
        self.wires.close()


def relay(factory: MockFactory, pin: int, to: Neighbour | None) -> RelayDevice:
    if to is not None:
        factory.pin(pin, pin_class=PowerPin, on_level=to.power)
    return RelayDevice("pi1", GpioRelayFence(pin=pin, driven_by="pi2"), pin_factory=factory)


def test_wire_going_flat_proves_the_fence(factory: MockFactory) -> None:
    cfg = cluster(action="off")

    async def main() -> FenceRecord:
        pi1 = Neighbour(factory)
        dev = relay(factory, 23, pi1)
        pi1.power(True)
        pi1.wires.start()
        await until(lambda: pi1.wires.state("pi1") is WireState.ALIVE)
        f = fencer(cfg, {"pi1": [dev]}, wire_probe=pi1.wires.state)
        record = await f.fence("pi1")
        pi1.close()
        return record

    record = run(main())
    assert record.ok and record.wire_before is WireState.ALIVE
    assert record.attempts[0].wire is WireState.FLAT


def test_wire_that_keeps_toggling_after_off_fails_the_level(factory: MockFactory) -> None:
    cfg = cluster(action="off")

    async def main() -> FenceRecord:
        pi1 = Neighbour(factory)
        miswired = relay(factory, 23, None)  # switches someone else's supply
        right = relay(factory, 24, pi1)
        pi1.power(True)
        pi1.wires.start()
        await until(lambda: pi1.wires.state("pi1") is WireState.ALIVE)
        f = fencer(
            cfg, {"pi1": [miswired, right]}, wire_probe=pi1.wires.state, wire_proof_timeout=0.3
        )
        record = await f.fence("pi1")
        pi1.close()
        return record

    record = run(main())
    first, second = record.attempts
    assert first.result is AttemptResult.FAILED and first.wire is WireState.ALIVE
    assert "still alive" in (first.error or "") and "did not cut" in (first.error or "")
    assert first.seconds >= 0.3
    assert second.result is AttemptResult.FENCED and second.wire is WireState.FLAT
    assert record.ok and record.device is not None and "GPIO24" in record.device


def test_only_a_miswired_device_means_a_failed_fence(factory: MockFactory) -> None:
    cfg = cluster(action="off")

    async def main() -> FenceRecord:
        pi1 = Neighbour(factory)
        pi1.power(True)
        pi1.wires.start()
        await until(lambda: pi1.wires.state("pi1") is WireState.ALIVE)
        f = fencer(
            cfg,
            {"pi1": [relay(factory, 23, None)]},
            wire_probe=pi1.wires.state,
            wire_proof_timeout=0.2,
        )
        record = await f.fence("pi1")
        pi1.close()
        return record

    record = run(main())
    assert not record.ok and record.result is FenceResult.FAILED


def test_wire_proof_modes_without_wire_evidence(tmp_path: Path) -> None:
    cfg = cluster(action="off")

    def probe(name: str) -> WireState:
        return WireState.UNKNOWN

    if_wired = fencer(cfg, {"pi1": [marker(tmp_path)]}, wire_probe=probe)
    assert run(if_wired.fence("pi1")).ok
    required = fencer(
        cfg, {"pi1": [marker(tmp_path)]}, wire_probe=probe, wire_proof=WireProof.REQUIRED
    )
    record = run(required.fence("pi1"))
    assert not record.ok and "wire proof required" in (record.error or "")

    def alive(name: str) -> WireState:
        return WireState.ALIVE

    trusting = fencer(cfg, {"pi1": [marker(tmp_path)]}, wire_probe=alive, wire_proof=WireProof.NONE)
    assert run(trusting.fence("pi1")).ok


# -- the health check ----------------------------------------------------------------------


def test_witness_reachable_open_or_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run(tcp_reachable("127.0.0.1", port, 1.0)) is None
    assert run(tcp_reachable("127.0.0.1", port, 1.0)) is None  # refused: the host answered


def test_witness_that_does_not_answer_times_out() -> None:
    # A listener whose accept queue is full drops further SYNs: a silent host, on loopback.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                fillers.append(s)
            problem = run(tcp_reachable("127.0.0.1", port, 0.3))
        finally:
            for s in fillers:
                s.close()
    assert problem is not None and "no answer" in problem


def test_unhealthy_node_refuses_to_fence(tmp_path: Path) -> None:
    cfg = cluster(action="off")

    async def unreachable(address: str, port: int, timeout: float) -> str | None:
        return f"cannot reach {address}:{port}: ENETUNREACH"

    dev = marker(tmp_path)
    health = HealthCheck("192.0.2.1", probe=unreachable)
    record = run(fencer(cfg, {"pi1": [dev]}, health=health).fence("pi1"))
    assert record.result is FenceResult.REFUSED and not record.ok
    assert "witness unreachable" in (record.error or "")
    assert record.attempts == () and not (tmp_path / "m" / "off").exists()
    assert health.last is not None and not health.last.ok


def test_healthy_node_with_a_real_witness_fences(tmp_path: Path) -> None:
    cfg = cluster(action="off")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        health = HealthCheck("127.0.0.1", witness_port=listener.getsockname()[1])
        record = run(fencer(cfg, {"pi1": [marker(tmp_path)]}, health=health).fence("pi1"))
    assert record.ok


def test_wire_health_without_witness_ignores_the_target() -> None:
    wires = {"pi1": WireState.ALIVE, "pi3": WireState.FLAT}
    check = HealthCheck(None, peer_wires=lambda: wires)
    v = run(check.check("pi1"))
    assert not v.ok and "pi3=flat" in v.reason, "the target's own wire proves nothing"
    wires["pi3"] = WireState.ALIVE
    assert run(check.check("pi1")).ok
    two_nodes = HealthCheck(None, peer_wires=lambda: {"pi1": WireState.FLAT})
    assert run(two_nodes.check("pi1")).ok
    assert run(HealthCheck(None).check("pi1")).ok


def test_a_broken_health_check_or_device_never_escapes(tmp_path: Path) -> None:
    cfg = cluster(action="off")

    async def broken(address: str, port: int, timeout: float) -> str | None:
        raise RuntimeError("probe bug")

    record = run(
        fencer(
            cfg, {"pi1": [marker(tmp_path)]}, health=HealthCheck("10.0.0.1", probe=broken)
        ).fence("pi1")
    )
    assert record.result is FenceResult.REFUSED and "probe bug" in (record.error or "")

    class Buggy(CommandDevice):
        async def _off(self) -> None:
            raise KeyError("driver bug")

    buggy = Buggy("pi1", CommandFence(("/bin/true",)))
    record = run(fencer(cfg, {"pi1": [buggy, marker(tmp_path)]}).fence("pi1"))
    assert record.ok and "driver bug" in (record.attempts[0].error or "")


def test_health_check_from_the_node_configuration() -> None:
    cfg = cluster()
    check = HealthCheck.for_node(cfg.node("pi2"), lambda: {"pi3": WireState.ALIVE})
    assert check.witness is None and run(check.check("pi1")).ok


def test_a_cancelled_fence_cancels_its_joiners_and_can_be_retried(tmp_path: Path) -> None:
    cfg = cluster(action="off")
    slow = CommandDevice("pi1", CommandFence((sys.executable, "-c", "import time; time.sleep(30)")))

    async def main() -> FenceRecord:
        f = fencer(cfg, {"pi1": [slow]})
        first = asyncio.ensure_future(f.fence("pi1"))
        await asyncio.sleep(0)
        joiner = asyncio.ensure_future(f.fence("pi1"))
        await until(lambda: "pi1" in f._in_flight)
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joiner
        assert "pi1" not in f._in_flight
        f.devices["pi1"] = (marker(tmp_path),)
        return await f.fence("pi1")

    assert run(main()).ok
