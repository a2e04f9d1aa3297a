"""Fence devices against real things: MockFactory pins, HTTP plugs on 127.0.0.1, scripts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.hw.power import (
    CommandDevice,
    PowerDeviceError,
    PowerState,
    RelayDevice,
    ShellyDevice,
    TasmotaDevice,
    UnusableDevice,
    open_device,
)
from appliance.node.config import CommandFence, GpioRelayFence, ShellyFence, TasmotaFence
from tests.hw.plugs import PlugState, plug_server
from tests.hw.support import run, status_cycle

# -- GPIO relay ----------------------------------------------------------------------------


@pytest.mark.parametrize("active_high", [True, False])
def test_relay_drives_the_pin_level_that_means_power(
    factory: MockFactory, active_high: bool
) -> None:
    spec = GpioRelayFence(pin=23, driven_by="pi2", active_high=active_high, initial_value=True)
    dev = RelayDevice("pi1", spec, pin_factory=factory)
    pin = factory.pin(23)
    powered_level = active_high
    assert pin.state == powered_level, "opened with initial_value: the neighbour keeps power"

    async def cycle() -> list[PowerState]:
        seen = [await dev.status()]
        await dev.off()
        seen.append(await dev.status())
        assert pin.state == (not powered_level)
        await dev.on()
        seen.append(await dev.status())
        return seen

    assert run(cycle()) == [PowerState.ON, PowerState.OFF, PowerState.ON]
    assert pin.state == powered_level
    dev.close()


def test_relay_initial_value_false_opens_with_power_off(factory: MockFactory) -> None:
    spec = GpioRelayFence(pin=5, driven_by="pi2", active_high=False, initial_value=False)
    dev = RelayDevice("pi1", spec, pin_factory=factory)
    assert factory.pin(5).state is True  # active-low: high = relay released = no power
    assert run(dev.status()) is PowerState.OFF
    dev.close()


def test_a_relay_driven_by_another_node_is_unusable_here(factory: MockFactory) -> None:
    spec = GpioRelayFence(pin=23, driven_by="pi2")
    dev = open_device(spec, target="pi1", me="pi3", pin_factory=factory)
    assert isinstance(dev, UnusableDevice)
    assert "pi2" in dev.reason
    with pytest.raises(PowerDeviceError, match="pi2"):
        run(dev.off())
    mine = open_device(spec, target="pi1", me="pi2", pin_factory=factory)
    assert isinstance(mine, RelayDevice)
    mine.close()


# -- Tasmota -------------------------------------------------------------------------------


def test_tasmota_off_on_status_with_documented_urls() -> None:
    with plug_server() as (url, st):
        dev = TasmotaDevice("pi2", TasmotaFence(url=url))

        assert run(status_cycle(dev)) == [PowerState.ON, PowerState.OFF, PowerState.ON]
        assert st.paths == [
            "/cm?cmnd=Power",
            "/cm?cmnd=Power%20Off",
            "/cm?cmnd=Power",
            "/cm?cmnd=Power%20On",
            "/cm?cmnd=Power",
        ]


def test_tasmota_channel_and_credentials_as_query_parameters() -> None:
    with plug_server(PlugState(user="admin", password="s3cret &=")) as (url, st):
        dev = TasmotaDevice(
            "pi2", TasmotaFence(url=url + "/", user="admin", password="s3cret &=", channel=2)
        )
        run(dev.off())
        assert st.outlets == {1: True, 2: False}
        assert st.paths == ["/cm?user=admin&password=s3cret%20%26%3D&cmnd=Power2%20Off"]
        assert "s3cret" not in repr(dev) and "s3cret" not in dev.description


def test_tasmota_wrong_password_is_an_authentication_failure() -> None:
    with plug_server(PlugState(user="admin", password="right")) as (url, st):
        dev = TasmotaDevice("pi2", TasmotaFence(url=url, user="admin", password="wrong"))
        with pytest.raises(PowerDeviceError, match="authentication failed"):
            run(dev.off())
        assert st.outlets[1] is True


def test_tasmota_plug_that_says_on_after_power_off_fails() -> None:
    with plug_server(PlugState(lie=True)) as (url, _):
        dev = TasmotaDevice("pi2", TasmotaFence(url=url))
        with pytest.raises(PowerDeviceError, match="answered ON to Power Off"):
            run(dev.off())
        assert run(dev.status()) is PowerState.ON


def test_tasmota_timeout_is_bounded_by_the_device_timeout() -> None:
    with plug_server(PlugState(delay=30)) as (url, _):
        dev = TasmotaDevice("pi2", TasmotaFence(url=url, timeout=0.3))
        t0 = time.monotonic()
        with pytest.raises(PowerDeviceError, match=r"timed out after 0\.3 s"):
            run(dev.off())
        assert time.monotonic() - t0 < 2.0


def test_tasmota_nobody_listening_fails_fast() -> None:
    with plug_server() as (url, _):
        pass  # the port is closed again
    dev = TasmotaDevice("pi2", TasmotaFence(url=url))
    with pytest.raises(PowerDeviceError, match="off"):
        run(dev.off())


def test_tasmota_unknown_channel_is_not_a_success() -> None:
    with plug_server() as (url, _):
        dev = TasmotaDevice("pi2", TasmotaFence(url=url, channel=7))
        with pytest.raises(PowerDeviceError, match="no POWER7"):
            run(dev.off())


# -- Shelly --------------------------------------------------------------------------------


def test_shelly_rpc_without_authentication() -> None:
    with plug_server(PlugState(outlets={0: True})) as (url, st):
        dev = ShellyDevice("pi3", ShellyFence(url=url))

        async def cycle() -> list[PowerState]:
            await dev.off()
            seen = [await dev.status()]
            await dev.on()
            seen.append(await dev.status())
            return seen

        assert run(cycle()) == [PowerState.OFF, PowerState.ON]
        assert st.paths == [
            "/rpc/Switch.Set?id=0&on=false",
            "/rpc/Switch.GetStatus?id=0",
            "/rpc/Switch.Set?id=0&on=true",
            "/rpc/Switch.GetStatus?id=0",
        ]


def test_shelly_digest_authentication_and_nonce_reuse() -> None:
    with plug_server(PlugState(outlets={0: True, 1: True}, password="pw")) as (url, st):
        dev = ShellyDevice("pi3", ShellyFence(url=url, switch_id=1, password="pw"))

        async def cycle() -> list[PowerState]:
            await dev.off()
            return [await dev.status()]

        assert run(cycle()) == [PowerState.OFF]
        assert st.outlets == {0: True, 1: False}
        # one challenge, then the cached nonce answers both requests
        assert st.auth_headers[0] is None
        assert all(h is not None and "SHA-256" in h for h in st.auth_headers[1:])
        assert len(st.paths) == 3
        assert "pw" not in repr(dev)


def test_shelly_expired_nonce_is_answered_once_more() -> None:
    with plug_server(PlugState(outlets={0: True}, password="pw", nonce_ttl=1)) as (url, st):
        dev = ShellyDevice("pi3", ShellyFence(url=url, password="pw"))

        async def twice() -> PowerState:
            await dev.off()
            return await dev.status()  # the cached nonce is refused: a new challenge

        assert run(twice()) is PowerState.OFF
        assert len(st.paths) == 4


def test_shelly_wrong_password_fails_with_a_reason() -> None:
    with plug_server(PlugState(outlets={0: True}, password="right")) as (url, st):
        dev = ShellyDevice("pi3", ShellyFence(url=url, password="wrong"))
        with pytest.raises(PowerDeviceError, match="authentication failed"):
            run(dev.off())
        assert st.outlets[0] is True
        nopw = ShellyDevice("pi3", ShellyFence(url=url))
        with pytest.raises(PowerDeviceError, match="asks for a password"):
            run(nopw.off())


def test_shelly_error_reply_and_timeout() -> None:
    with plug_server(PlugState(outlets={0: True})) as (url, _):
        dev = ShellyDevice("pi3", ShellyFence(url=url, switch_id=4))
        with pytest.raises(PowerDeviceError, match="HTTP 500: Argument 'id', value 4 not found"):
            run(dev.off())
    with plug_server(PlugState(outlets={0: True}, delay=30)) as (url, _):
        slow = ShellyDevice("pi3", ShellyFence(url=url, timeout=0.2))
        with pytest.raises(PowerDeviceError, match="timed out"):
            run(slow.status())


# -- command -------------------------------------------------------------------------------

SCRIPT = """\
import pathlib, sys
node, action = sys.argv[-2], sys.argv[-1]
state = pathlib.Path(sys.argv[1]) / node
if action == "off":
    state.write_text("off")
elif action == "on":
    state.write_text("on")
elif action == "status":
    if sys.argv[2] == "no-status":
        sys.exit(3)
    print(state.read_text() if state.exists() else "on", "(from the state file)")
elif action == "hang":
    pass
if sys.argv[2] == "fail":
    print("relay board not found", file=sys.stderr)
    sys.exit(2)
if sys.argv[2] == "slow":
    import time
    time.sleep(30)
"""


def command(tmp_path: Path, mode: str, timeout: float = 5.0) -> CommandDevice:
    script = tmp_path / "fence.py"
    script.write_text(SCRIPT)
    argv = (sys.executable, str(script), str(tmp_path), mode)
    return CommandDevice("pi2", CommandFence(argv=argv, timeout=timeout))


def test_command_device_actions_and_status_word(tmp_path: Path) -> None:
    dev = command(tmp_path, "ok")

    assert run(status_cycle(dev)) == [PowerState.ON, PowerState.OFF, PowerState.ON]
    assert (tmp_path / "pi2").read_text() == "on"


def test_command_without_status_support_is_unknown(tmp_path: Path) -> None:
    assert run(command(tmp_path, "no-status").status()) is PowerState.UNKNOWN


def test_command_failure_carries_exit_status_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(PowerDeviceError, match="exit status 2: relay board not found"):
        run(command(tmp_path, "fail").off())


def test_command_timeout_kills_the_program(tmp_path: Path) -> None:
    dev = command(tmp_path, "slow", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(PowerDeviceError, match=r"timed out after 0\.5 s"):
        run(dev.off())
    assert time.monotonic() - t0 < 3.0


def test_command_that_cannot_start(tmp_path: Path) -> None:
    dev = CommandDevice("pi2", CommandFence(argv=(str(tmp_path / "missing"),)))
    with pytest.raises(PowerDeviceError, match="cannot start"):
        run(dev.off())
