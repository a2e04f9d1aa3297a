"""The cluster file and the key file: the example loads, every mistake is reported precisely."""

from __future__ import annotations

import copy
import datetime
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.cli import main as cli_main
from appliance.node import config as config_module
from appliance.node.config import (
    ClusterConfig,
    CommandFence,
    ConfigError,
    FenceAction,
    GpioRelayFence,
    ShellyFence,
    TasmotaFence,
    default_cluster_id,
    default_state_port,
    load_config,
    load_key,
    loads_config,
    parse_config,
)
from appliance.node.config_cli import config_main
from appliance.protocols.config import ProtocolConfig
from appliance.protocols.replication import Style

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cluster.toml"
EXAMPLE_TEXT = EXAMPLE.read_text()
EXAMPLE_DATA: dict[str, Any] = tomllib.loads(EXAMPLE_TEXT)
HEX_KEY = "00112233445566778899aabbccddeeff" * 2
DELETE = object()
F = "cluster.toml"


def example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_DATA)


def mutate(data: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    target: Any = data
    for step in path[:-1]:
        if isinstance(step, str) and step not in target:
            target[step] = {}
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, F)
    assert str(info.value) == "\n".join(info.value.problems)
    return list(info.value.problems)


def minimal() -> dict[str, Any]:
    return {
        "cluster": {"name": "lab"},
        "nodes": [{"name": "n1", "id": 1, "address": "127.0.0.1"}],
    }


# -- the example -----------------------------------------------------------------------------


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.name == "pi-cluster"
    assert cfg.cluster_id == default_cluster_id("pi-cluster") == 592358038  # stable forever
    assert cfg.replication is Style.SEMI_ACTIVE
    assert cfg.key_file == EXAMPLE.parent / "cluster.key"
    assert (cfg.multicast_group, cfg.port, cfg.ttl, cfg.interface) == (
        "239.255.76.1",
        7405,
        1,
        "auto",
    )
    assert [n.name for n in cfg.nodes] == ["pi1", "pi2", "pi3"]
    assert [n.id for n in cfg.nodes] == [1, 2, 3]
    pi1, pi2, pi3 = cfg.nodes
    assert pi1.address == "192.168.1.11" and pi1.client_port == 6379
    assert pi1.heartbeat_out_pin == 17 and pi1.heartbeat_in == {"pi2": 27, "pi3": 22}
    assert pi1.fence == (
        GpioRelayFence(pin=23, driven_by="pi2", active_high=True, initial_value=True),
    )
    assert pi2.fence == (TasmotaFence(url="http://192.168.1.52", timeout=2.0),)
    assert pi3.fence[0].kind == "tasmota"
    assert pi1.fence_action is FenceAction.POWER_CYCLE and pi1.off_hold == 3.0
    assert pi1.witness == "192.168.1.1"
    assert cfg.timing.heartbeat_interval == 0.02 and cfg.timing.wire_toggle == 0.01
    assert cfg.clients.requirepass is None


def test_example_key_file_is_not_shipped() -> None:
    assert not (EXAMPLE.parent / "cluster.key").exists()
    assert "head -c 32 /dev/urandom | xxd -p -c 64 > cluster.key" in EXAMPLE_TEXT


def test_protocol_config_maps_every_field() -> None:
    cfg = load_config(EXAMPLE)
    pc = cfg.protocol_config(b"k" * 32)
    assert isinstance(pc, ProtocolConfig)
    assert pc.cluster_id == cfg.cluster_id and pc.nodes == (1, 2, 3) and pc.key == b"k" * 32
    assert pc.annexed
    assert pc.heartbeat_interval == 0.02 and pc.silence_timeout == 0.15
    assert pc.flat_wire_timeout == 0.05 and pc.rank_delay == 0.05 and pc.lag_timeout == 1.0
    assert pc.window == 256 and pc.max_datagram == 1472


def test_timing_in_milliseconds() -> None:
    data = minimal()
    data["timing"] = {"heartbeat_ms": 10, "silence_timeout_ms": 60.5, "join_timeout_ms": 2000}
    data["protocol"] = {"window": 64}
    pc = parse_config(data).protocol_config(b"k" * 16)
    assert pc.heartbeat_interval == 0.01 and pc.silence_timeout == 0.0605
    assert pc.join_timeout == 2.0 and pc.window == 64


def test_defaults() -> None:
    cfg = parse_config(minimal(), F, Path("/etc/appliance"))
    defaults = ProtocolConfig(cluster_id=0, nodes=(1,), key=b"")
    pc = cfg.protocol_config(b"k" * 16)
    for name in ("heartbeat_interval", "silence_timeout", "vote_timeout", "window", "max_log"):
        assert getattr(pc, name) == getattr(defaults, name)
    assert cfg.key_file == Path("/etc/appliance/cluster.key")
    assert cfg.replication is Style.SEMI_ACTIVE
    assert cfg.multicast_group == "239.255.76.1" and cfg.interface == "auto"
    node = cfg.nodes[0]
    assert node.client_port == 6379 and node.fence == () and node.heartbeat_in == {}
    assert node.witness is None and node.control_socket is None
    assert cfg.clients.max_clients == 1024


def test_every_fence_device_type() -> None:
    data = minimal()
    data["nodes"].append({"name": "n2", "id": 2, "address": "127.0.0.1", "client_port": 6380})
    data["nodes"][0]["fence"] = [
        {"type": "tasmota", "url": "http://127.0.0.1:8080/", "user": "admin", "password": "pw"},
        {"type": "shelly", "url": "https://10.0.0.9", "switch_id": 1, "timeout_ms": 500},
        {"type": "command", "argv": ["/bin/fence", "--hard"], "timeout_ms": 10000},
        {"type": "tasmota", "url": "http://127.0.0.1:8080", "channel": 3},
    ]
    data["nodes"][0]["fence_action"] = "off"
    data["nodes"][1]["fence"] = [{"type": "gpio-relay", "pin": 5, "driven_by": "n1"}]
    data["cluster"]["replication"] = "semi-passive"
    data["cluster"]["id"] = 7
    cfg = parse_config(data)
    n1, n2 = cfg.nodes
    assert n1.fence == (
        TasmotaFence("http://127.0.0.1:8080", "admin", "pw", None, 2.0),
        ShellyFence("https://10.0.0.9", 1, None, 0.5),
        CommandFence(("/bin/fence", "--hard"), 10.0),
        TasmotaFence("http://127.0.0.1:8080", channel=3),
    )
    assert "pw" not in repr(n1)
    assert n1.fence_action is FenceAction.OFF
    assert n2.fence == (GpioRelayFence(5, "n1", True, True, 2.0),)
    assert cfg.replication is Style.SEMI_PASSIVE and cfg.cluster_id == 7


def test_node_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.node("pi2").id == 2
    assert cfg.node_by_id(3).name == "pi3"
    monkeypatch.setattr(socket, "gethostname", lambda: "pi3")
    assert cfg.node(None).name == "pi3"
    monkeypatch.setattr(socket, "gethostname", lambda: "pi1.lan.example")
    assert cfg.node().name == "pi1"
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    with pytest.raises(ConfigError) as info:
        cfg.node()
    assert "'laptop'" in str(info.value) and "pi1, pi2, pi3" in str(info.value)
    assert "--node" in str(info.value)
    with pytest.raises(ConfigError, match=r"no node named 'pi9'; configured nodes: pi1, pi2, pi3"):
        cfg.node("pi9")


# -- every validation path --------------------------------------------------------------------

NAME_EXPECTED = (
    "expected a name of 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
)
MS_EXPECTED = "expected a number of milliseconds > 0 and <= 3600000"
FENCE_MISSING = (
    "missing; expected at least one [[nodes.fence]] device (a node that cannot be fenced "
    "can never be replaced: no fence, no exclusion)"
)
URL_EXPECTED = 'expected an http:// or https:// URL of the device (e.g. "http://192.168.1.50")'
ARGV_EXPECTED = (
    'expected a non-empty list of strings, the first an absolute path (["/usr/local/bin/fence"])'
)
RELAY = ("nodes", 0, "fence", 0)

CASES: list[tuple[tuple[str | int, ...], object, list[str]]] = [
    # the example's own problem statement
    (
        ("nodes", 1, "client_port"),
        70000,
        [
            f"{F}:nodes[1].client_port: 70000; expected an integer 1..65535",
        ],
    ),
    # top level and [cluster]
    (
        ("clutser",),
        {"name": "x"},
        [
            (
                f"{F}:clutser: unknown key; expected one of cluster, network, timing, protocol, "
                'clients, nodes (did you mean "cluster"?)'
            ),
        ],
    ),
    (
        ("cluster",),
        DELETE,
        [
            f"{F}:cluster: missing; expected a [cluster] table",
        ],
    ),
    (
        ("cluster",),
        "pi",
        [
            f'{F}:cluster: "pi"; expected a [cluster] table',
        ],
    ),
    (
        ("cluster", "name"),
        DELETE,
        [
            f"{F}:cluster.name: missing; {NAME_EXPECTED}",
        ],
    ),
    (
        ("cluster", "name"),
        "my cluster",
        [
            f'{F}:cluster.name: "my cluster"; {NAME_EXPECTED}',
        ],
    ),
    (
        ("cluster", "nmae"),
        "x",
        [
            f"{F}:cluster.nmae: unknown key; expected one of name, id, replication, key_file "
            '(did you mean "name"?)',
        ],
    ),
    (
        ("cluster", "id"),
        2**32,
        [
            f"{F}:cluster.id: 4294967296; expected an integer 0..4294967295",
        ],
    ),
    (
        ("cluster", "id"),
        True,
        [
            f"{F}:cluster.id: true; expected an integer 0..4294967295",
        ],
    ),
    (
        ("cluster", "replication"),
        "active",
        [
            f'{F}:cluster.replication: "active"; expected "semi-active" or "semi-passive"',
        ],
    ),
    (
        ("cluster", "key_file"),
        5,
        [
            (
                f"{F}:cluster.key_file: 5; expected a file path (relative paths are relative to "
                "this "
                "file's directory)"
            ),
        ],
    ),
    # [network]
    (
        ("network",),
        [1],
        [
            f"{F}:network: [1]; expected a [network] table",
        ],
    ),
    (
        ("network", "multicast_group"),
        "192.168.1.1",
        [
            (
                f'{F}:network.multicast_group: "192.168.1.1"; expected an IPv4 multicast address '
                "224.0.0.0-239.255.255.255 (e.g. 239.255.76.1)"
            ),
        ],
    ),
    (
        ("network", "multicast_group"),
        "ff02::1",
        [
            (
                f'{F}:network.multicast_group: "ff02::1"; expected an IPv4 multicast address '
                "224.0.0.0-239.255.255.255 (e.g. 239.255.76.1)"
            ),
        ],
    ),
    (
        ("network", "port"),
        0,
        [
            f"{F}:network.port: 0; expected an integer 1..65535",
        ],
    ),
    (
        ("network", "port"),
        "7405",
        [
            f'{F}:network.port: "7405"; expected an integer 1..65535',
        ],
    ),
    (
        ("network", "ttl"),
        256,
        [
            f"{F}:network.ttl: 256; expected an integer 0..255",
        ],
    ),
    (
        ("network", "interface"),
        "eth0 ",
        [
            (
                f'{F}:network.interface: "eth0 "; expected "auto", an interface name (e.g. '
                '"eth0") or '
                "one of its IPv4 addresses"
            ),
        ],
    ),
    (
        ("network", "interface"),
        "10.0.0.256",
        [
            (
                f'{F}:network.interface: "10.0.0.256"; expected "auto", an interface name (e.g. '
                '"eth0") or one of its IPv4 addresses'
            ),
        ],
    ),
    (
        ("network", "loop"),
        True,
        [
            f"{F}:network.loop: unknown key; expected one of multicast_group, port, ttl, interface",
        ],
    ),
    # [timing]
    (
        ("timing", "heartbeat_ms"),
        0,
        [
            f"{F}:timing.heartbeat_ms: 0; {MS_EXPECTED}",
        ],
    ),
    (
        ("timing", "heartbeat_ms"),
        "20ms",
        [
            f'{F}:timing.heartbeat_ms: "20ms"; {MS_EXPECTED}',
        ],
    ),
    (
        ("timing", "heartbeat_ms"),
        float("nan"),
        [
            f"{F}:timing.heartbeat_ms: nan; {MS_EXPECTED}",
        ],
    ),
    (
        ("timing", "lag_timeout_ms"),
        float("inf"),
        [
            f"{F}:timing.lag_timeout_ms: inf; {MS_EXPECTED}",
        ],
    ),
    (
        ("timing", "rank_delay_ms"),
        False,
        [
            f"{F}:timing.rank_delay_ms: false; {MS_EXPECTED}",
        ],
    ),
    (
        ("timing", "heartbeat"),
        20,
        [
            f"{F}:timing.heartbeat: unknown key; expected one of "
            + ", ".join(config_module._TIMING_KEYS)
            + ' (did you mean "heartbeat_ms"?)',
        ],
    ),
    (
        ("timing", "heartbeat_ms"),
        75,
        [
            (
                f"{F}:timing.silence_timeout_ms: 150; expected silence_timeout_ms (150) > 2 x "
                "heartbeat_ms (75)"
            ),
        ],
    ),
    (
        ("timing", "silence_timeout_ms"),
        DELETE,
        [],
    ),
    (
        ("timing", "flat_wire_timeout_ms"),
        200,
        [
            (
                f"{F}:timing.flat_wire_timeout_ms: 200; expected flat_wire_timeout_ms (200) <= "
                "silence_timeout_ms (150)"
            ),
        ],
    ),
    (
        ("timing", "wire_toggle_ms"),
        25,
        [
            (
                f"{F}:timing.wire_toggle_ms: 25; expected flat_wire_timeout_ms (50) > 2 x "
                "wire_toggle_ms (25)"
            ),
        ],
    ),
    (
        ("timing", "min_rto_ms"),
        30,
        [
            (
                f"{F}:timing.min_rto_ms: 30; expected min_rto_ms (30) <= initial_rto_ms (20) <= "
                "max_rto_ms (500)"
            ),
        ],
    ),
    # [protocol]
    (
        ("protocol", "window"),
        0,
        [
            f"{F}:protocol.window: 0; expected an integer 1..65535",
        ],
    ),
    (
        ("protocol", "batch_bytes"),
        1500,
        [
            f"{F}:protocol.batch_bytes: 1500; expected at most max_datagram (1472)",
        ],
    ),
    (
        ("protocol", "mtu"),
        1500,
        [
            (
                f"{F}:protocol.mtu: unknown key; expected one of window, max_datagram, "
                "batch_bytes, "
                "max_log, state_chunk"
            ),
        ],
    ),
    # [clients]
    (
        ("clients", "max_clients"),
        0,
        [
            f"{F}:clients.max_clients: 0; expected an integer 1..1000000",
        ],
    ),
    (
        ("clients", "max_request_bytes"),
        1.5,
        [
            f"{F}:clients.max_request_bytes: 1.5; expected an integer 64..1073741824",
        ],
    ),
    (
        ("clients", "requirepass"),
        12345678,
        [
            f"{F}:clients.requirepass: (hidden); expected a non-empty string",
        ],
    ),
    # [[nodes]]
    (
        ("nodes",),
        DELETE,
        [
            f"{F}:nodes: missing; expected an array of [[nodes]] tables, one per node",
        ],
    ),
    (
        ("nodes",),
        [],
        [
            f"{F}:nodes: []; expected an array of [[nodes]] tables, one per node",
        ],
    ),
    (
        ("nodes",),
        {"name": "pi1"},
        [
            f'{F}:nodes: {{name = "pi1"}}; expected an array of [[nodes]] tables, one per node',
        ],
    ),
    (
        ("nodes", 2),
        "pi3",
        [
            f'{F}:nodes[2]: "pi3"; expected a [[nodes]] table',
            f"{F}:nodes[0].heartbeat_in.pi3: 22; expected another node's name as the key (pi2)",
            f"{F}:nodes[1].heartbeat_in.pi3: 22; expected another node's name as the key (pi1)",
        ],
    ),
    (
        ("nodes", 0, "name"),
        "-pi1",
        [
            f'{F}:nodes[0].name: "-pi1"; {NAME_EXPECTED}',
            f"{F}:nodes[1].heartbeat_in.pi1: 27; expected another node's name as the key (pi3)",
            f"{F}:nodes[2].heartbeat_in.pi1: 27; expected another node's name as the key (pi2)",
        ],
    ),
    (
        ("nodes", 0, "id"),
        0,
        [
            f"{F}:nodes[0].id: 0; expected an integer 1..32767",
        ],
    ),
    (
        ("nodes", 0, "id"),
        32768,
        [
            f"{F}:nodes[0].id: 32768; expected an integer 1..32767",
        ],
    ),
    (
        ("nodes", 0, "id"),
        DELETE,
        [
            f"{F}:nodes[0].id: missing; expected an integer 1..32767",
        ],
    ),
    (
        ("nodes", 0, "address"),
        "239.1.1.1",
        [
            (
                f'{F}:nodes[0].address: "239.1.1.1"; expected a unicast IPv4 address such as '
                "192.168.1.10"
            ),
        ],
    ),
    (
        ("nodes", 0, "address"),
        "0.0.0.0",
        [
            (
                f'{F}:nodes[0].address: "0.0.0.0"; expected a unicast IPv4 address such as '
                "192.168.1.10"
            ),
        ],
    ),
    (
        ("nodes", 0, "address"),
        "pi1.local",
        [
            (
                f'{F}:nodes[0].address: "pi1.local"; expected a unicast IPv4 address such as '
                "192.168.1.10"
            ),
        ],
    ),
    (
        ("nodes", 0, "adress"),
        "10.0.0.1",
        [
            f"{F}:nodes[0].adress: unknown key; expected one of "
            + ", ".join(config_module._NODE_KEYS)
            + ' (did you mean "address"?)',
        ],
    ),
    (
        ("nodes", 0, "control_socket"),
        "run/ctl.sock",
        [
            f'{F}:nodes[0].control_socket: "run/ctl.sock"; expected an absolute path',
        ],
    ),
    (
        ("nodes", 0, "status_led_pin"),
        28,
        [
            f"{F}:nodes[0].status_led_pin: 28; expected a BCM GPIO pin number 0..27",
        ],
    ),
    (
        ("nodes", 0, "status_led_pin"),
        17,
        [
            (
                f"{F}:nodes[0].status_led_pin: 17; expected a GPIO pin not already used on pi1 "
                "(nodes[0].heartbeat_out_pin)"
            ),
        ],
    ),
    (
        ("nodes", 1, "status_led_pin"),
        23,
        [
            (
                f"{F}:nodes[0].fence[0].pin: 23; expected a GPIO pin not already used on pi2 "
                "(nodes[1].status_led_pin)"
            ),
        ],
    ),
    (
        ("nodes", 0, "heartbeat_in"),
        [27, 22],
        [
            (
                f"{F}:nodes[0].heartbeat_in: [27, 22]; expected a table of peer node name = input "
                "pin "
                f"({{pi2 = 27}})"
            ),
        ],
    ),
    (
        ("nodes", 0, "heartbeat_in", "pi2"),
        -1,
        [
            f"{F}:nodes[0].heartbeat_in.pi2: -1; expected a BCM GPIO pin number 0..27",
        ],
    ),
    (
        ("nodes", 0, "heartbeat_in", "pi4"),
        5,
        [
            f"{F}:nodes[0].heartbeat_in.pi4: 5; expected another node's name as the key (pi2, pi3)",
        ],
    ),
    (
        ("nodes", 0, "heartbeat_in", "pi1"),
        5,
        [
            f"{F}:nodes[0].heartbeat_in.pi1: 5; expected another node's name as the key (pi2, pi3)",
        ],
    ),
    (
        ("nodes", 0, "heartbeat_in", "pi3"),
        27,
        [
            (
                f"{F}:nodes[0].heartbeat_in.pi3: 27; expected a GPIO pin not already used on pi1 "
                "(nodes[0].heartbeat_in.pi2)"
            ),
        ],
    ),
    (
        ("nodes", 1, "heartbeat_out_pin"),
        DELETE,
        [
            (
                f"{F}:nodes[0].heartbeat_in.pi2: 27; expected a wire from a node with a "
                "heartbeat_out_pin (nodes[1] has none, so this wire would always look flat)"
            ),
            (
                f"{F}:nodes[2].heartbeat_in.pi2: 22; expected a wire from a node with a "
                "heartbeat_out_pin (nodes[1] has none, so this wire would always look flat)"
            ),
        ],
    ),
    (
        ("nodes", 0, "fence_action"),
        "reboot",
        [
            f'{F}:nodes[0].fence_action: "reboot"; expected "power-cycle" or "off"',
        ],
    ),
    (
        ("nodes", 0, "off_hold_ms"),
        0,
        [
            f"{F}:nodes[0].off_hold_ms: 0; expected a number of milliseconds > 0 and <= 600000",
        ],
    ),
    (
        ("nodes", 0, "witness"),
        "gateway",
        [
            (
                f'{F}:nodes[0].witness: "gateway"; expected an IPv4 address to ping (e.g. the LAN '
                'gateway) or "none"'
            ),
        ],
    ),
    # fence devices
    (
        ("nodes", 0, "fence"),
        DELETE,
        [
            f"{F}:nodes[0].fence: {FENCE_MISSING}",
        ],
    ),
    (
        ("nodes", 0, "fence"),
        [],
        [
            f"{F}:nodes[0].fence: {FENCE_MISSING}",
        ],
    ),
    (
        ("nodes", 0, "fence"),
        {"type": "tasmota"},
        [
            (
                f'{F}:nodes[0].fence: {{type = "tasmota"}}; expected an array of [[nodes.fence]] '
                "tables"
            ),
        ],
    ),
    (
        ("nodes", 0, "fence", 0),
        "relay",
        [
            (
                f'{F}:nodes[0].fence[0]: "relay"; expected a fence device table with type = '
                '"gpio-relay", "tasmota", "shelly", "command"'
            ),
        ],
    ),
    (
        (*RELAY, "type"),
        "ipmi",
        [
            (
                f'{F}:nodes[0].fence[0].type: "ipmi"; expected one of "gpio-relay", "tasmota", '
                '"shelly", "command"'
            ),
        ],
    ),
    (
        (*RELAY, "type"),
        DELETE,
        [
            (
                f'{F}:nodes[0].fence[0].type: missing; expected one of "gpio-relay", "tasmota", '
                '"shelly", "command"'
            ),
        ],
    ),
    (
        (*RELAY, "pin"),
        99,
        [
            f"{F}:nodes[0].fence[0].pin: 99; expected a BCM GPIO pin number 0..27",
        ],
    ),
    (
        (*RELAY, "pin"),
        17,
        [
            (
                f"{F}:nodes[0].fence[0].pin: 17; expected a GPIO pin not already used on pi2 "
                "(nodes[1].heartbeat_out_pin)"
            ),
        ],
    ),
    (
        (*RELAY, "active_high"),
        "no",
        [
            f'{F}:nodes[0].fence[0].active_high: "no"; expected true or false',
        ],
    ),
    (
        (*RELAY, "driven_by"),
        "pi1",
        [
            (
                f'{F}:nodes[0].fence[0].driven_by: "pi1"; expected the name of the node whose GPIO '
                "drives the relay (pi2, pi3; a node cannot reliably cut its own power)"
            ),
        ],
    ),
    (
        (*RELAY, "driven_by"),
        "pi7",
        [
            (
                f'{F}:nodes[0].fence[0].driven_by: "pi7"; expected the name of the node whose GPIO '
                "drives the relay (pi2, pi3; a node cannot reliably cut its own power)"
            ),
        ],
    ),
    (
        (*RELAY, "url"),
        "http://x",
        [
            (
                f"{F}:nodes[0].fence[0].url: unknown key; expected one of type, pin, driven_by, "
                "active_high, initial_value, timeout_ms"
            ),
        ],
    ),
    (
        (*RELAY, "timeout_ms"),
        0,
        [
            (
                f"{F}:nodes[0].fence[0].timeout_ms: 0; expected a number of milliseconds > 0 and "
                "<= "
                "600000"
            ),
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "url"),
        "ftp://192.168.1.52",
        [
            f'{F}:nodes[1].fence[0].url: "ftp://192.168.1.52"; {URL_EXPECTED}',
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "url"),
        "http://",
        [
            f'{F}:nodes[1].fence[0].url: "http://"; {URL_EXPECTED}',
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "url"),
        "http://h/cm?cmnd=Power",
        [
            f'{F}:nodes[1].fence[0].url: "http://h/cm?cmnd=Power"; {URL_EXPECTED}',
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "url"),
        "http://h:99999",
        [
            f'{F}:nodes[1].fence[0].url: "http://h:99999"; {URL_EXPECTED}',
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "url"),
        "http://admin:pw@h",
        [
            (
                f'{F}:nodes[1].fence[0].url: "http://admin:pw@h"; {URL_EXPECTED} without '
                "credentials "
                "(use user/password)"
            ),
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "password"),
        "pw",
        [
            (
                f"{F}:nodes[1].fence[0].user: missing; expected a user name with password "
                "(Tasmota: "
                '"admin")'
            ),
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "channel"),
        0,
        [
            f"{F}:nodes[1].fence[0].channel: 0; expected an integer 1..32",
        ],
    ),
    (
        ("nodes", 1, "fence", 0, "switch_id"),
        0,
        [
            (
                f"{F}:nodes[1].fence[0].switch_id: unknown key; expected one of type, url, user, "
                "password, channel, timeout_ms"
            ),
        ],
    ),
    (
        ("nodes", 2, "fence", 0),
        {"type": "shelly", "url": "http://s", "switch_id": -1},
        [
            f"{F}:nodes[2].fence[0].switch_id: -1; expected an integer 0..255",
        ],
    ),
    (
        ("nodes", 2, "fence", 0),
        {"type": "command", "argv": ["fence-pi"]},
        [
            f'{F}:nodes[2].fence[0].argv: ["fence-pi"]; {ARGV_EXPECTED}',
        ],
    ),
    (
        ("nodes", 2, "fence", 0),
        {"type": "command", "argv": []},
        [
            f"{F}:nodes[2].fence[0].argv: []; {ARGV_EXPECTED}",
        ],
    ),
    (
        ("nodes", 2, "fence", 0),
        {"type": "command", "argv": ["/bin/x", 1]},
        [
            f'{F}:nodes[2].fence[0].argv: ["/bin/x", 1]; {ARGV_EXPECTED}',
        ],
    ),
    (
        ("nodes", 2, "fence", 0),
        {"type": "command"},
        [
            f"{F}:nodes[2].fence[0].argv: missing; {ARGV_EXPECTED}",
        ],
    ),
    # uniqueness across nodes
    (
        ("nodes", 2, "name"),
        "pi1",
        [
            f'{F}:nodes[2].name: "pi1"; expected a unique node name (nodes[0] has it)',
            f"{F}:nodes[0].heartbeat_in.pi3: 22; expected another node's name as the key (pi2)",
            f"{F}:nodes[1].heartbeat_in.pi3: 22; expected another node's name as the key (pi1)",
        ],
    ),
    (
        ("nodes", 2, "id"),
        1,
        [
            f"{F}:nodes[2].id: 1; expected a unique id (nodes[0] has it)",
        ],
    ),
]


def _case_id(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[_case_id(c[0]) for c in CASES])
def test_validation_message(
    path: tuple[str | int, ...], value: object, expected: list[str]
) -> None:
    data = mutate(example(), path, value)
    if not expected:
        parse_config(data, F)
        return
    assert problems_of(data) == expected


def test_a_bad_name_is_reported_once() -> None:
    data = example()
    data["nodes"][0]["name"] = "pi 1"
    data["nodes"][1]["heartbeat_in"] = {"pi 1": 27, "pi3": 22}
    data["nodes"][2]["heartbeat_in"] = {"pi 1": 27, "pi2": 22}
    assert problems_of(data) == [f'{F}:nodes[0].name: "pi 1"; {NAME_EXPECTED}']


def test_ports_must_differ_on_the_same_address_only() -> None:
    data = example()
    for n in data["nodes"]:
        n["address"] = "127.0.0.1"
    assert problems_of(data) == [
        f"{F}:nodes[1].client_port: 6379; expected a port not used by another node on "
        "127.0.0.1 (nodes[0].client_port)",
        f"{F}:nodes[2].client_port: 6379; expected a port not used by another node on "
        "127.0.0.1 (nodes[0].client_port)",
    ]
    data["nodes"][1]["client_port"] = 6380
    data["nodes"][2]["client_port"] = 6381
    data["nodes"][1]["control_socket"] = "/run/a.sock"
    data["nodes"][2]["control_socket"] = "/run/a.sock"
    assert problems_of(data) == [
        f'{F}:nodes[2].control_socket: "/run/a.sock"; expected a path not used by another '
        "node on 127.0.0.1 (nodes[1].control_socket)"
    ]
    data["nodes"][2]["control_socket"] = "/run/b.sock"
    assert [n.client_port for n in parse_config(data).nodes] == [6379, 6380, 6381]


def test_state_chunk_must_fit_a_datagram() -> None:
    data = example()
    data["protocol"] = {"max_datagram": 600, "batch_bytes": 500, "state_chunk": 1000}
    [problem] = problems_of(data)
    assert problem.startswith(f"{F}:protocol.state_chunk: 1000; expected at most ")
    assert "(what fits a 600-byte datagram)" in problem


def test_a_single_node_needs_no_fence() -> None:
    assert parse_config(minimal()).nodes[0].fence == ()
    data = minimal()
    data["nodes"].append({"name": "n2", "id": 2, "address": "10.0.0.2"})
    assert problems_of(data) == [
        f"{F}:nodes[0].fence: {FENCE_MISSING}",
        f"{F}:nodes[1].fence: {FENCE_MISSING}",
    ]


def test_many_problems_reported_at_once() -> None:
    data = example()
    data["cluster"]["replication"] = "active"
    data["network"]["port"] = -1
    data["timing"]["heartbeat_ms"] = -5
    data["nodes"][0]["client_port"] = 0
    data["nodes"][1]["id"] = 1
    data["nodes"][2]["fence"][0]["url"] = "nope"
    data["nodes"][2]["colour"] = "blue"
    problems = problems_of(data)
    assert len(problems) == 7
    for fragment in (
        "cluster.replication:",
        "network.port:",
        "timing.heartbeat_ms:",
        "nodes[0].client_port:",
        "nodes[1].id:",
        "nodes[2].fence[0].url:",
        "nodes[2].colour: unknown key",
    ):
        assert sum(fragment in p for p in problems) == 1, fragment
    assert all(p.startswith(f"{F}:") for p in problems)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\nname = "x"\n\n[[nodes]]\nname = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}:5:8: invalid TOML: Invalid value",)
    with pytest.raises(
        ConfigError, match=r"^c\.toml:2:9: invalid TOML: Cannot declare \('cluster',\) twice$"
    ):
        loads_config('[cluster]\n[cluster]\nname = "x"\n', "c.toml")
    with pytest.raises(ConfigError, match="nested too deeply"):
        loads_config("a = " + "[" * 5000 + "]" * 5000, "c.toml")


def test_unreadable_or_binary_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file or directory"):
        load_config(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bin\.toml: byte 0xff at offset 8; expected UTF-8"):
        load_config(binary)


def test_long_values_are_shortened() -> None:
    data = example()
    data["cluster"]["name"] = "x" * 500
    [problem] = problems_of(data)
    assert '"xxxx' in problem and "...; expected a name" in problem and len(problem) < 200


def test_datetime_value_is_shown() -> None:
    data = example()
    data["network"]["port"] = datetime.date(2024, 1, 2)
    assert problems_of(data) == [f"{F}:network.port: 2024-01-02; expected an integer 1..65535"]


# -- the key file -----------------------------------------------------------------------------


def write_key(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_key_hex_with_newline(tmp_path: Path) -> None:
    assert load_key(write_key(tmp_path, HEX_KEY.encode() + b"\n")) == bytes.fromhex(HEX_KEY)


def test_key_hex_wrapped_by_xxd(tmp_path: Path) -> None:
    text = (HEX_KEY[:60] + "\n" + HEX_KEY[60:] + "\r\n").encode()
    assert load_key(write_key(tmp_path, text)) == bytes.fromhex(HEX_KEY)


def test_key_raw_bytes(tmp_path: Path) -> None:
    raw = bytes(range(200, 232))
    assert load_key(write_key(tmp_path, raw)) == raw
    assert load_key(write_key(tmp_path, b"correct horse battery staple\n")) == (
        b"correct horse battery staple"
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604, 0o602, 0o660, 0o666, 0o610])
def test_key_group_or_other_access_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path, HEX_KEY.encode(), mode)
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert str(info.value) == (
        f"{path}: mode {mode:04o} lets group or others access the cluster key; "
        f"expected mode 0600: run `chmod 600 {path}`"
    )


def test_key_owner_only_modes_accepted(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        assert len(load_key(write_key(tmp_path, HEX_KEY.encode(), mode))) == 32


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_key_empty(tmp_path: Path, content: bytes) -> None:
    path = write_key(tmp_path, content)
    with pytest.raises(ConfigError, match=r"the key file is empty; expected at least 16 bytes"):
        load_key(path)


@pytest.mark.parametrize(
    ("content", "n"),
    [(b"fifteen bytes!!", 15), (b"00112233445566778899aabbccddee\n", 15), (b"abcd", 2)],
)
def test_key_too_short(tmp_path: Path, content: bytes, n: int) -> None:
    path = write_key(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert str(info.value).startswith(
        f"{path}: key of {n} bytes; expected at least 16 bytes (32 recommended): "
    )
    assert "head -c 32 /dev/urandom | xxd -p -c 64 >" in str(info.value)


def test_key_odd_hex_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path, HEX_KEY[:-1].encode() + b"\n")
    with pytest.raises(ConfigError, match="an odd number of hex digits"):
        load_key(path)


def test_key_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the key file: No such file"):
        load_key(tmp_path / "absent.key")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key(tmp_path)


# -- fuzzing: nothing but ConfigError ----------------------------------------------------------

LINES = EXAMPLE_TEXT.splitlines()

toml_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-5, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(
        ["auto", "none", "pi1", "pi2", "239.1.2.3", "10.0.0.1", "http://h", "off", "tasmota"]
    ),
    st.dates(),
    st.datetimes(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
    ),
    max_leaves=10,
)
snippets = st.sampled_from(
    [
        "x = 1",
        "[cluster]",
        "[[nodes]]",
        "[[nodes.fence]]",
        'type = "command"',
        "id = 1",
        'name = "pi1"',
        "heartbeat_in = { pi1 = 1 }",
        "[timing]",
        "heartbeat_ms = 1e9",
        "= =",
        '"',
        "[nodes]",
        "fence = 3",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_text_mutations_raise_only_config_error(data: st.DataObject) -> None:
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "duplicate", "insert", "edit", "truncate"]))
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, data.draw(st.one_of(snippets, st.text(max_size=20))))
        elif op == "edit":
            line = lines[i]
            if "=" in line:
                key = line.split("=", 1)[0]
                lines[i] = (
                    key
                    + "= "
                    + data.draw(
                        st.one_of(
                            st.integers(-10, 100000).map(str),
                            st.sampled_from(
                                ["true", "[]", "{}", '""', "nan", "-inf", "1979-05-27"]
                            ),
                            st.text(max_size=10).map(lambda s: '"' + s.replace('"', "") + '"'),
                        )
                    )
                )
            else:
                j = data.draw(st.integers(0, len(line)))
                lines[i] = line[:j] + data.draw(st.text(max_size=3)) + line[j:]
        else:
            lines = lines[:i]
    try:
        cfg = loads_config("\n".join(lines), F)
    except ConfigError as e:
        assert e.problems and all(p.startswith(F + ":") for p in e.problems)
    else:
        assert isinstance(cfg, ClusterConfig)


def _random_path(data: st.DataObject, doc: Any) -> tuple[Any, Any]:
    """A container inside ``doc`` and one of its keys/indices (possibly new)."""
    target = doc
    while True:
        if isinstance(target, dict):
            keys = [*target, data.draw(st.text(min_size=1, max_size=8))]
        elif isinstance(target, list):
            keys = list(range(len(target)))
            if not keys:
                return None, None
        else:
            return None, None
        key = data.draw(st.sampled_from(keys))
        child = target.get(key) if isinstance(target, dict) else target[key]
        if isinstance(child, dict | list) and data.draw(st.booleans()):
            target = child
            continue
        return target, key


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_structured_mutations_raise_only_config_error(data: st.DataObject) -> None:
    doc = example()
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = _random_path(data, doc)
        if container is None:
            continue
        if data.draw(st.booleans()) and (isinstance(container, dict) and key in container):
            del container[key]
        elif isinstance(container, dict) or key < len(container):
            container[key] = data.draw(toml_values)
    try:
        cfg = parse_config(doc, F)
    except ConfigError as e:
        assert e.problems and all(p.startswith(F + ":") for p in e.problems)
    else:
        assert isinstance(cfg, ClusterConfig)
        cfg.protocol_config(b"k" * 32)


# -- the command ------------------------------------------------------------------------------


def test_cli_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main(["check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{EXAMPLE}: ok (3 nodes, multicast 239.255.76.1:7405, replication semi-active)\n"
    assert err == ""


def test_cli_ok_with_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = write_key(tmp_path, HEX_KEY.encode() + b"\n")
    assert cli_main(["config", "check", str(EXAMPLE), "--key", str(key)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[1] == f"{key}: ok (32-byte key)"


def test_cli_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cluster.toml"
    bad.write_text(EXAMPLE_TEXT.replace("port = 7405", "port = 74050").replace('"pi3"', '"pi2"'))
    key = write_key(tmp_path, HEX_KEY.encode(), 0o644)
    assert config_main(["check", str(bad), "--key", str(key)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert f"{bad}:network.port: 74050; expected an integer 1..65535" in lines
    assert f'{bad}:nodes[2].name: "pi2"; expected a unique node name (nodes[1] has it)' in lines
    assert any(line.endswith(f"run `chmod 600 {key}`") for line in lines)
    assert lines[-1] == f"{bad}: {len(lines) - 1} problems found"


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_main([]) == 2
    assert config_main(["lint", "x"]) == 2
    assert config_main(["check"]) == 2
    assert "usage: appliance config" in capsys.readouterr().err
    assert config_main(["--help"]) == 0
    assert cli_main(["--help"]) == 0
    assert "config check FILE" in capsys.readouterr().out


def test_cli_as_a_process(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "appliance", "config", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{EXAMPLE}: ok (3 nodes")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nname = 1\n")
    failed = subprocess.run(
        [sys.executable, "-m", "appliance", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"{bad}:cluster.name: 1; {NAME_EXPECTED}",
        f"{bad}:nodes: missing; expected an array of [[nodes]] tables, one per node",
        f"{bad}: 2 problems found",
    ]


def test_docs_describe_every_key() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    sections = [f"`[{s}]`" for s in config_module._SECTIONS if s != "nodes"] + ["`[[nodes]]`"]
    assert all(f"### {s}" in docs for s in sections)
    keys = {
        *config_module._CLUSTER_KEYS,
        *config_module._NETWORK_KEYS,
        *config_module._TIMING_KEYS,
        *config_module._PROTOCOL_KEYS,
        *config_module._CLIENT_KEYS,
        *config_module._NODE_KEYS,
        *(k for keys in config_module._FENCE_KEYS.values() for k in keys),
    }
    missing = sorted(k for k in keys if f"`{k}`" not in docs)
    assert not missing, f"docs/operations.md does not describe {missing}"


def test_state_port_defaults_beside_the_client_port_and_must_be_free_on_the_address() -> None:
    data = example()
    nodes = parse_config(data).nodes
    assert [n.state_port for n in nodes] == [16379, 16379, 16379]  # one per address
    assert default_state_port(6379) == 16379 and default_state_port(60000) == 50000
    for i, n in enumerate(data["nodes"]):
        n["address"] = "127.0.0.1"
        n["client_port"] = 6379 + i
    assert [n.state_port for n in parse_config(data).nodes] == [16379, 16380, 16381]
    data["nodes"][1]["client_port"] = 16379
    assert problems_of(data) == [
        f"{F}:nodes[1].client_port: 16379; expected a port not used by another node on "
        "127.0.0.1 (nodes[0].state_port)",
    ]
    data["nodes"][1]["client_port"] = 6380
    data["nodes"][2]["state_port"] = 6381
    assert problems_of(data) == [
        f"{F}:nodes[2].state_port: 6381; expected a port not used by this node on "
        "127.0.0.1 (nodes[2].client_port)",
    ]
    data["nodes"][2]["state_port"] = 70000
    assert problems_of(data) == [f"{F}:nodes[2].state_port: 70000; expected an integer 1..65535"]
    data["nodes"][2]["state_port"] = 7000
    data["nodes"][0]["state_port"] = 16380  # node 1's default state port
    assert problems_of(data) == [
        f"{F}:nodes[1].state_port: 16380; expected a port not used by another node on "
        "127.0.0.1 (nodes[0].state_port); it is the default (client_port + 10000): set "
        "state_port",
    ]
