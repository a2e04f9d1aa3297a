"""The cluster configuration: one TOML file describes the whole cluster, the key lives apart.

Every node reads the same file (``examples/cluster.toml`` is a commented example and
``docs/operations.md`` the reference). :func:`load_config` validates all of it before returning
and raises one :class:`ConfigError` that lists *every* problem found, each as
``FILE:KEY: VALUE; expected WHAT`` (``KEY`` is a path such as ``nodes[1].client_port``, with
0-based array indices). Unknown keys are errors, so a typo never silently falls back to a
default.

Durations are written in milliseconds in the file (``heartbeat_ms = 20``) and held in seconds
in the dataclasses, like :class:`~appliance.protocols.config.ProtocolConfig`.

The cluster key is not in the file: :func:`load_key` reads it from a separate file that must be
readable by its owner only (mode 0600).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import stat
import string
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from appliance.protocols.config import GATEWAY_GROUP_BASE, ProtocolConfig, StateTransfer
from appliance.protocols.replication import Style

T = TypeVar("T")

MIN_KEY_BYTES: Final = 16
MAX_NODE_ID: Final = GATEWAY_GROUP_BASE - 1
MAX_GPIO_PIN: Final = 27
"""BCM numbering: GPIO 0..27 are on the 40-pin header of every Pi model with one."""
MAX_UDP_PAYLOAD: Final = 65507
MAX_DURATION_MS: Final = 3_600_000
KEY_GENERATE_HINT: Final = "head -c 32 /dev/urandom | xxd -p -c 64 > {f} && chmod 600 {f}"


class ConfigError(Exception):
    """The configuration (or key file) is unusable; ``problems`` lists every reason, one a line."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))


class FenceAction(enum.Enum):
    POWER_CYCLE = "power-cycle"
    """Off, confirm off, hold for ``off_hold``, on: the node reboots and rejoins as a backup."""
    OFF = "off"
    """Off and confirm off; a person powers the node back on."""


# -- fence devices -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpioRelayFence:
    """A relay channel switching the fenced node's supply, driven by another node's GPIO pin.

    Modelled as a gpiozero ``OutputDevice`` whose *on* means "the fenced node has power":
    ``active_high`` says which pin level that is (many relay boards are active-low) and
    ``initial_value`` what the driving node sets when it opens the pin (``True``: power on).
    Only the node named ``driven_by`` can operate it.
    """

    kind: ClassVar[str] = "gpio-relay"
    pin: int
    driven_by: str
    active_high: bool = True
    initial_value: bool = True
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class TasmotaFence:
    """A Tasmota smart plug or power strip: ``URL/cm?cmnd=Power%20Off`` (``PowerN`` if
    ``channel`` is set), ``Power`` for the status, optional ``user``/``password``."""

    kind: ClassVar[str] = "tasmota"
    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    channel: int | None = None
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ShellyFence:
    """A Shelly Gen2+ plug or relay: RPC ``Switch.Set`` / ``Switch.GetStatus`` on ``switch_id``."""

    kind: ClassVar[str] = "shelly"
    url: str
    switch_id: int = 0
    password: str | None = field(default=None, repr=False)
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class CommandFence:
    """A program run as ``argv + [node name, action]``; exit status 0 means done."""

    kind: ClassVar[str] = "command"
    argv: tuple[str, ...]
    timeout: float = 2.0


FenceDevice = GpioRelayFence | TasmotaFence | ShellyFence | CommandFence


# -- the configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    id: int
    address: str
    client_port: int = 6379
    state_port: int = 16379
    """TCP port on ``address`` where this node serves snapshots to joining backups."""
    control_socket: Path | None = None
    """``None``: the agent's default under its runtime directory."""
    heartbeat_out_pin: int | None = None
    heartbeat_in: dict[str, int] = field(default_factory=dict, hash=False)
    """Peer node name -> the input pin that peer's heartbeat wire is connected to here."""
    status_led_pin: int | None = None
    fence: tuple[FenceDevice, ...] = ()
    """The devices that can cut this node's power, tried in order (fencing levels)."""
    fence_action: FenceAction = FenceAction.POWER_CYCLE
    off_hold: float = 3.0
    """Seconds the power stays off during a power-cycle."""
    witness: str | None = None
    """IPv4 address this node must reach to count itself healthy enough to fence others;
    ``None``: at least one live peer heartbeat wire (or, without wires, no extra check)."""


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """Protocol timers (seconds, named as in ProtocolConfig) plus the heartbeat-wire rate."""

    heartbeat_interval: float
    silence_timeout: float
    flat_wire_timeout: float
    rank_delay: float
    ack_delay: float
    nack_delay: float
    initial_rto: float
    min_rto: float
    max_rto: float
    lag_timeout: float
    join_retry: float
    found_timeout: float
    proposal_retry: float
    vote_timeout: float
    fence_retry: float
    join_timeout: float
    wire_toggle: float = 0.01
    """Half-period of the heartbeat wire: the output pin changes level this often."""


@dataclass(frozen=True, slots=True)
class ProtocolTuning:
    """Sizes and windows (named as in ProtocolConfig)."""

    window: int
    max_datagram: int
    batch_bytes: int
    max_log: int
    state_chunk: int


@dataclass(frozen=True, slots=True)
class ClientLimits:
    max_clients: int = 1024
    max_request_bytes: int = 1 << 20
    requirepass: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    cluster_id: int
    replication: Style
    key_file: Path
    multicast_group: str
    port: int
    ttl: int
    interface: str
    """``"auto"``, an interface name or one of its IPv4 addresses."""
    timing: TimingConfig
    protocol: ProtocolTuning
    clients: ClientLimits
    nodes: tuple[NodeConfig, ...]
    source: str = field(default="<config>", compare=False)
    """The file this was loaded from, as given (used in error messages)."""

    def protocol_config(self, key: bytes) -> ProtocolConfig:
        """The protocol core's parameters for this cluster, with the cluster key."""
        timing = dataclasses.asdict(self.timing)
        del timing["wire_toggle"]
        return ProtocolConfig(
            cluster_id=self.cluster_id,
            nodes=tuple(n.id for n in self.nodes),
            key=key,
            annexed=True,  # both replication styles attach an annex to every input
            state_transfer=StateTransfer.STREAM,  # snapshots go by TCP (node/state_transfer.py)
            host_confirms_restore=True,  # the agent loads a snapshot in steps (Agent._restore)
            **timing,
            **dataclasses.asdict(self.protocol),
        )

    def node(self, name: str | None = None) -> NodeConfig:
        """The node called ``name``; ``None``: this host, by ``socket.gethostname()`` (a fully
        qualified hostname also matches on its first label)."""
        if name is not None:
            candidates = [name]
            what = f"no node named {name!r}"
        else:
            host = socket.gethostname()
            candidates = [host, host.split(".", 1)[0]]
            what = f"no node named after this host ({host!r}); pass --node NAME"
        for n in self.nodes:
            if n.name in candidates:
                return n
        names = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"{self.source}: {what}; configured nodes: {names}")

    def node_by_id(self, node_id: int) -> NodeConfig:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


def default_state_port(client_port: int) -> int:
    """A node's state-transfer port when not set: like Redis Cluster's bus port, the client
    port + 10000 (- 10000 where that would pass 65535), so nodes that share an address with
    consecutive client ports get consecutive state ports that collide with none of them."""
    return client_port + 10000 if client_port + 10000 <= 65535 else client_port - 10000


def default_cluster_id(name: str) -> int:
    """A stable u32 derived from the cluster name (the same on every node and every run)."""
    digest = hashlib.sha256(b"appliance cluster id\0" + name.encode()).digest()
    return int.from_bytes(digest[:4], "big")


# -- loading -------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate the cluster file; :class:`ConfigError` lists every problem."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{source}: byte 0x{data[e.start]:02x} at offset {e.start}; expected UTF-8 text"
        ) from None
    return loads_config(text, source, Path(source).parent)


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.S)


def loads_config(
    text: str, source: str = "<string>", base_dir: Path | None = None
) -> ClusterConfig:
    """Validate TOML text; a relative ``key_file`` is resolved against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_POSITION.match(msg)
        if m:
            raise ConfigError(f"{source}:{m[2]}:{m[3]}: invalid TOML: {m[1]}") from None
        raise ConfigError(f"{source}: invalid TOML: {msg}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, source, base_dir)


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> ClusterConfig:
    """Validate an already parsed TOML document (a dict as ``tomllib`` returns)."""
    return _Parser(source, Path(".") if base_dir is None else base_dir).cluster(data)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read the cluster key: hex digits (whitespace allowed) or raw bytes, at least 16 bytes
    once decoded, in a file that neither group nor others can read or write."""
    f = os.fspath(path)
    try:
        st = os.stat(f)
    except OSError as e:
        raise ConfigError(
            f"{f}: cannot read the key file: {e.strerror or e}; "
            f"generate one: {KEY_GENERATE_HINT.format(f=f)}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{f}: not a regular file; expected the cluster key file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{f}: mode {mode:04o} lets group or others access the cluster key; "
            f"expected mode 0600: run `chmod 600 {f}`"
        )
    try:
        with open(f, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise ConfigError(f"{f}: cannot read the key file: {e.strerror or e}") from None
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ConfigError(
            f"{f}: the key file is empty; expected at least {MIN_KEY_BYTES} bytes of key: "
            f"{KEY_GENERATE_HINT.format(f=f)}"
        )
    key = _decode_hex(raw)
    if key is None:
        raise ConfigError(
            f"{f}: an odd number of hex digits; expected whole bytes in hex (or raw bytes): "
            f"{KEY_GENERATE_HINT.format(f=f)}"
        )
    if not key:
        key = raw
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{f}: key of {len(key)} bytes; expected at least {MIN_KEY_BYTES} bytes "
            f"(32 recommended): {KEY_GENERATE_HINT.format(f=f)}"
        )
    return key


_HEX_DIGITS = frozenset(string.hexdigits.encode())
_WHITESPACE = frozenset(b" \t\r\n")


def _decode_hex(raw: bytes) -> bytes | None:
    """``raw`` decoded as hex (whitespace such as ``xxd -p`` line breaks ignored); ``b""`` if
    it is not hex at all (a raw key); None if it is hex with an odd number of digits."""
    if not all(b in _HEX_DIGITS or b in _WHITESPACE for b in raw):
        return b""
    digits = bytes(b for b in raw if b in _HEX_DIGITS)
    if not digits:
        return b""
    if len(digits) % 2:
        return None
    return bytes.fromhex(digits.decode())


# -- validation ----------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


_MISSING: Final = object()

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}")
_NAME_EXPECTED = "a name of 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"


def _join(path: str, key: str) -> str:
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{shown}" if path else shown


def _show(value: object, limit: int = 60) -> str:
    """A value as it would be written in TOML, shortened."""
    if value is _MISSING:
        return "missing"
    text = _toml(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _toml(value: object, budget: int) -> str:
    """TOML-ish text of ``value``; containers stop early once ``budget`` characters are used."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        items = [f"{_join('', str(k))} = " for k in value]
        return _container("{", items, list(value.values()), "}", budget)
    if isinstance(value, list | tuple):
        return _container("[", [""] * len(value), list(value), "]", budget)
    return str(value)


def _container(
    opening: str, prefixes: list[str], values: list[object], closing: str, budget: int
) -> str:
    parts: list[str] = []
    used = len(opening)
    for prefix, v in zip(prefixes, values, strict=True):
        if used > budget:
            parts.append("...")
            break
        part = prefix + _toml(v, budget - used)
        parts.append(part)
        used += len(part) + 2
    return opening + ", ".join(parts) + closing


# value parsers: return the value or raise _Bad(what was expected)


def _int(lo: int, hi: int, what: str = "an integer") -> Callable[[object], int]:
    def parse(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad(f"{what} {lo}..{hi}")
        return v

    return parse


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


def _string(v: object) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise _Bad("a non-empty string")
    return v


def _name(v: object) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise _Bad(_NAME_EXPECTED)
    return v


def _ms(lo_exclusive: float = 0.0, hi: float = MAX_DURATION_MS) -> Callable[[object], float]:
    """Milliseconds in the file, seconds out."""

    def parse(v: object) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not lo_exclusive < v <= hi
        ):
            raise _Bad(f"a number of milliseconds > {lo_exclusive:g} and <= {hi:.0f}")
        return v / 1000.0

    return parse


def _ipv4(v: object) -> ipaddress.IPv4Address:
    if not isinstance(v, str):
        raise _Bad("an IPv4 address such as 192.168.1.10")
    try:
        return ipaddress.IPv4Address(v)
    except ValueError:
        raise _Bad("an IPv4 address such as 192.168.1.10") from None


def _unicast(v: object) -> str:
    what = "a unicast IPv4 address such as 192.168.1.10"
    try:
        a = _ipv4(v)
    except _Bad:
        raise _Bad(what) from None
    if a.is_multicast or a.is_unspecified or a == ipaddress.IPv4Address("255.255.255.255"):
        raise _Bad(what)
    return str(a)


def _multicast(v: object) -> str:
    what = "an IPv4 multicast address 224.0.0.0-239.255.255.255 (e.g. 239.255.76.1)"
    try:
        a = _ipv4(v)
    except _Bad:
        raise _Bad(what) from None
    if not a.is_multicast:
        raise _Bad(what)
    return str(a)


def _interface(v: object) -> str:
    what = '"auto", an interface name (e.g. "eth0") or one of its IPv4 addresses'
    if not isinstance(v, str):
        raise _Bad(what)
    if v == "auto":
        return v
    if re.fullmatch(r"[0-9.]+", v):
        try:
            return _unicast(v)
        except _Bad:
            raise _Bad(what) from None
    if not _IFNAME.fullmatch(v):
        raise _Bad(what)
    return v


def _witness(v: object) -> str | None:
    if v == "none":
        return None
    try:
        return _unicast(v)
    except _Bad:
        raise _Bad('an IPv4 address to ping (e.g. the LAN gateway) or "none"') from None


def _abs_path(v: object) -> Path:
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise _Bad("an absolute path")
    return Path(v)


def _path(v: object) -> Path:
    if not isinstance(v, str) or not v or "\0" in v:
        raise _Bad("a file path (relative paths are relative to this file's directory)")
    return Path(v)


def _url(v: object) -> str:
    what = 'an http:// or https:// URL of the device (e.g. "http://192.168.1.50")'
    if not isinstance(v, str):
        raise _Bad(what)
    try:
        u = urllib.parse.urlsplit(v)
        _ = u.port
    except ValueError:
        raise _Bad(what) from None
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
        raise _Bad(what)
    if u.username is not None or u.password is not None:
        raise _Bad(what + " without credentials (use user/password)")
    if any(c.isspace() for c in v):
        raise _Bad(what)
    return v.rstrip("/")


def _argv(v: object) -> tuple[str, ...]:
    what = 'a non-empty list of strings, the first an absolute path (["/usr/local/bin/fence"])'
    if not isinstance(v, list) or not v:
        raise _Bad(what)
    if not all(isinstance(a, str) and "\0" not in a for a in v):
        raise _Bad(what)
    if not v[0].startswith("/"):
        raise _Bad(what)
    return tuple(v)


def _choice(*options: str) -> Callable[[object], str]:
    def parse(v: object) -> str:
        if v not in options:
            raise _Bad(" or ".join(json.dumps(o) for o in options))
        assert isinstance(v, str)
        return v

    return parse


_pin = _int(0, MAX_GPIO_PIN, "a BCM GPIO pin number")
_port = _int(1, 65535)
_timeout = _ms(0, 600_000)

_PROTOCOL_DEFAULTS: Final[dict[str, Any]] = {
    f.name: f.default
    for f in dataclasses.fields(ProtocolConfig)
    if f.default is not dataclasses.MISSING
}

_TIMING_KEYS: Final[dict[str, str]] = {
    "heartbeat_ms": "heartbeat_interval",
    "silence_timeout_ms": "silence_timeout",
    "flat_wire_timeout_ms": "flat_wire_timeout",
    "rank_delay_ms": "rank_delay",
    "lag_timeout_ms": "lag_timeout",
    "ack_delay_ms": "ack_delay",
    "nack_delay_ms": "nack_delay",
    "initial_rto_ms": "initial_rto",
    "min_rto_ms": "min_rto",
    "max_rto_ms": "max_rto",
    "join_retry_ms": "join_retry",
    "found_timeout_ms": "found_timeout",
    "proposal_retry_ms": "proposal_retry",
    "vote_timeout_ms": "vote_timeout",
    "fence_retry_ms": "fence_retry",
    "join_timeout_ms": "join_timeout",
    "wire_toggle_ms": "wire_toggle",
}

_PROTOCOL_KEYS: Final[dict[str, Callable[[object], int]]] = {
    "window": _int(1, 65535),
    "max_datagram": _int(512, MAX_UDP_PAYLOAD),
    "batch_bytes": _int(128, MAX_UDP_PAYLOAD),
    "max_log": _int(16, 1 << 24),
    "state_chunk": _int(64, MAX_UDP_PAYLOAD),
}

_TIMING_FIELDS: Final[dict[str, str]] = {v: k for k, v in _TIMING_KEYS.items()}

_TIMING_RELATIONS: Final[
    tuple[tuple[tuple[str, ...], Callable[[dict[str, float]], bool], str], ...]
] = (
    # (fields, relation, expected); the first field's key the file sets is blamed
    (
        ("silence_timeout", "heartbeat_interval"),
        lambda v: v["silence_timeout"] > 2 * v["heartbeat_interval"],
        "silence_timeout_ms ({silence_timeout}) > 2 x heartbeat_ms ({heartbeat_interval})",
    ),
    (
        ("flat_wire_timeout", "silence_timeout"),
        lambda v: v["flat_wire_timeout"] <= v["silence_timeout"],
        "flat_wire_timeout_ms ({flat_wire_timeout}) <= silence_timeout_ms ({silence_timeout})",
    ),
    (
        ("wire_toggle", "flat_wire_timeout"),
        lambda v: v["flat_wire_timeout"] > 2 * v["wire_toggle"],
        "flat_wire_timeout_ms ({flat_wire_timeout}) > 2 x wire_toggle_ms ({wire_toggle})",
    ),
    (
        ("initial_rto", "min_rto", "max_rto"),
        lambda v: v["min_rto"] <= v["initial_rto"] <= v["max_rto"],
        "min_rto_ms ({min_rto}) <= initial_rto_ms ({initial_rto}) <= max_rto_ms ({max_rto})",
    ),
)

_TIMING_DEFAULTS: Final[dict[str, Any]] = {
    **_PROTOCOL_DEFAULTS,
    "wire_toggle": TimingConfig.__dataclass_fields__["wire_toggle"].default,
}

_SECTIONS: Final = ("cluster", "network", "timing", "protocol", "clients", "nodes")
_CLUSTER_KEYS: Final = ("name", "id", "replication", "key_file")
_NETWORK_KEYS: Final = ("multicast_group", "port", "ttl", "interface")
_CLIENT_KEYS: Final = ("max_clients", "max_request_bytes", "requirepass")
_NODE_KEYS: Final = (
    "name",
    "id",
    "address",
    "client_port",
    "state_port",
    "control_socket",
    "heartbeat_out_pin",
    "heartbeat_in",
    "status_led_pin",
    "fence",
    "fence_action",
    "off_hold_ms",
    "witness",
)
_FENCE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "gpio-relay": ("type", "pin", "driven_by", "active_high", "initial_value", "timeout_ms"),
    "tasmota": ("type", "url", "user", "password", "channel", "timeout_ms"),
    "shelly": ("type", "url", "switch_id", "password", "timeout_ms"),
    "command": ("type", "argv", "timeout_ms"),
}

DEFAULT_MULTICAST_GROUP: Final = "239.255.76.1"
DEFAULT_PORT: Final = 7405


@dataclass
class _NodeDraft:
    """One ``[[nodes]]`` entry's valid fields (None where missing or invalid)."""

    path: str
    name: str | None = None
    raw_name: str | None = None
    """The name as written, even if invalid (references to it are not reported again)."""
    id: int | None = None
    address: str | None = None
    client_port: int | None = None
    state_port: int | None = None
    state_port_given: bool = False
    control_socket: Path | None = None
    heartbeat_out_pin: int | None = None
    heartbeat_in: dict[str, int] = field(default_factory=dict)
    status_led_pin: int | None = None
    fence: list[tuple[str, FenceDevice]] = field(default_factory=list)
    fence_given: bool = False
    fence_action: FenceAction | None = None
    off_hold: float | None = None
    witness: str | None = None


class _Parser:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    # -- reporting -------------------------------------------------------------------------

    def bad(self, key: str, value: object, expected: str, secret: bool = False) -> None:
        shown = "(hidden)" if secret and value is not _MISSING else _show(value)
        self.problems.append(f"{self.source}:{key}: {shown}; expected {expected}")

    def unknown_keys(self, table: Mapping[str, object], path: str, allowed: Sequence[str]) -> None:
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.problems.append(
                    f"{self.source}:{_join(path, k)}: unknown key; "
                    f"expected one of {', '.join(allowed)}{hint}"
                )

    # -- reading ---------------------------------------------------------------------------

    def get(
        self,
        table: Mapping[str, object],
        path: str,
        key: str,
        parse: Callable[[object], T],
        default: T | object = _MISSING,
        secret: bool = False,
    ) -> T | None:
        """The parsed value; the default when absent (an error if there is none); None when
        invalid (after reporting it)."""
        value = table.get(key, _MISSING)
        if value is _MISSING and default is not _MISSING:
            return default  # type: ignore[return-value]
        try:
            if value is _MISSING:
                parse(_MISSING)  # every parser rejects it: this yields what was expected
            return parse(value)
        except _Bad as b:
            self.bad(_join(path, key), value, b.expected, secret)
            return None

    def table(
        self, parent: Mapping[str, object], key: str, required: bool = False
    ) -> Mapping[str, object] | None:
        value = parent.get(key, _MISSING)
        if value is _MISSING:
            if required:
                self.bad(key, value, f"a [{key}] table")
            return {} if not required else None
        if not isinstance(value, Mapping):
            self.bad(key, value, f"a [{key}] table")
            return None
        return value

    # -- sections --------------------------------------------------------------------------

    def cluster(self, data: Mapping[str, Any]) -> ClusterConfig:
        self.unknown_keys(data, "", _SECTIONS)

        name: str | None = None
        cluster_id: int | None = None
        style: Style | None = None
        key_file: Path | None = None
        c = self.table(data, "cluster", required=True)
        if c is not None:
            self.unknown_keys(c, "cluster", _CLUSTER_KEYS)
            name = self.get(c, "cluster", "name", _name)
            cluster_id = self.get(c, "cluster", "id", _int(0, 0xFFFFFFFF), None)
            if cluster_id is None and name is not None and "id" not in c:
                cluster_id = default_cluster_id(name)
            s = self.get(
                c, "cluster", "replication", _choice(*(s.value for s in Style)), "semi-active"
            )
            style = Style(s) if s is not None else None
            key_file = self.get(c, "cluster", "key_file", _path, Path("cluster.key"))
            if key_file is not None and not key_file.is_absolute():
                key_file = self.base_dir / key_file

        group: str | None = DEFAULT_MULTICAST_GROUP
        port: int | None = DEFAULT_PORT
        ttl: int | None = 1
        interface: str | None = "auto"
        n = self.table(data, "network")
        if n is not None:
            self.unknown_keys(n, "network", _NETWORK_KEYS)
            group = self.get(n, "network", "multicast_group", _multicast, group)
            port = self.get(n, "network", "port", _port, port)
            ttl = self.get(n, "network", "ttl", _int(0, 255), ttl)
            interface = self.get(n, "network", "interface", _interface, interface)

        timing = self.timing(data)
        tuning = self.tuning(data)

        clients: ClientLimits | None = ClientLimits()
        cl = self.table(data, "clients")
        if cl is not None:
            self.unknown_keys(cl, "clients", _CLIENT_KEYS)
            d = ClientLimits()
            mc = self.get(cl, "clients", "max_clients", _int(1, 1_000_000), d.max_clients)
            mr = self.get(
                cl, "clients", "max_request_bytes", _int(64, 1 << 30), d.max_request_bytes
            )
            rp = self.get(cl, "clients", "requirepass", _string, None, secret=True)
            clients = None if mc is None or mr is None else ClientLimits(mc, mr, rp)

        nodes = self.nodes(data)

        if timing is not None and tuning is not None and nodes:
            self.protocol_checks(timing, tuning, len(nodes))

        if self.problems:
            raise ConfigError(self.problems)
        assert name is not None and cluster_id is not None and style is not None
        assert key_file is not None and group is not None and port is not None
        assert ttl is not None and interface is not None and timing is not None
        assert tuning is not None and clients is not None and nodes is not None
        return ClusterConfig(
            name=name,
            cluster_id=cluster_id,
            replication=style,
            key_file=key_file,
            multicast_group=group,
            port=port,
            ttl=ttl,
            interface=interface,
            timing=timing,
            protocol=tuning,
            clients=clients,
            nodes=nodes,
            source=self.source,
        )

    def timing(self, data: Mapping[str, Any]) -> TimingConfig | None:
        t = self.table(data, "timing")
        if t is None:
            return None
        self.unknown_keys(t, "timing", tuple(_TIMING_KEYS))
        values: dict[str, float] = {}  # valid values only
        ok = True
        for key, fname in _TIMING_KEYS.items():
            if key not in t:  # the defaults are ProtocolConfig's, in seconds
                values[fname] = float(_TIMING_DEFAULTS[fname])
                continue
            v = self.get(t, "timing", key, _ms())
            if v is None:
                ok = False
            else:
                values[fname] = v
        shown = {fname: _ms_str(v) for fname, v in values.items()}
        for fnames, holds, expected in _TIMING_RELATIONS:
            if not all(f in values for f in fnames) or holds(values):
                continue
            keys = [_TIMING_FIELDS[f] for f in fnames]
            key = next((k for k in keys if k in t), keys[0])
            self.bad(f"timing.{key}", t.get(key, _MISSING), expected.format(**shown))
            ok = False
        return TimingConfig(**values) if ok else None

    def tuning(self, data: Mapping[str, Any]) -> ProtocolTuning | None:
        p = self.table(data, "protocol")
        if p is None:
            return None
        self.unknown_keys(p, "protocol", tuple(_PROTOCOL_KEYS))
        values: dict[str, int] = {}
        ok = True
        for key, parse in _PROTOCOL_KEYS.items():
            v = self.get(p, "protocol", key, parse, _PROTOCOL_DEFAULTS[key])
            if v is None:
                ok = False
            else:
                values[key] = v
        if not ok:
            return None
        if values["batch_bytes"] > values["max_datagram"]:
            self.bad(
                "protocol.batch_bytes",
                values["batch_bytes"],
                f"at most max_datagram ({values['max_datagram']})",
            )
            return None
        return ProtocolTuning(**values)

    def protocol_checks(self, timing: TimingConfig, tuning: ProtocolTuning, n: int) -> None:
        """What the protocol core itself requires (checked with a throw-away key)."""
        fields = dataclasses.asdict(timing)
        del fields["wire_toggle"]
        try:
            pc = ProtocolConfig(
                cluster_id=0,
                nodes=tuple(range(1, n + 1)),
                key=bytes(32),
                annexed=True,
                **fields,
                **dataclasses.asdict(tuning),
            )
        except ValueError as e:
            self.problems.append(f"{self.source}:protocol: {e}")
            return
        if pc.max_payload < 64:
            self.bad(
                "protocol.max_datagram",
                tuning.max_datagram,
                "a datagram large enough for messages of at least 64 bytes",
            )
        elif tuning.state_chunk > pc.max_payload:
            self.bad(
                "protocol.state_chunk",
                tuning.state_chunk,
                f"at most {pc.max_payload} (what fits a {tuning.max_datagram}-byte datagram)",
            )

    # -- nodes -----------------------------------------------------------------------------

    def nodes(self, data: Mapping[str, Any]) -> tuple[NodeConfig, ...] | None:
        raw = data.get("nodes", _MISSING)
        expected = "an array of [[nodes]] tables, one per node"
        if raw is _MISSING or not isinstance(raw, list) or not raw:
            self.bad("nodes", raw, expected)
            return None
        drafts: list[_NodeDraft] = []
        for i, entry in enumerate(raw):
            path = f"nodes[{i}]"
            if not isinstance(entry, Mapping):
                self.bad(path, entry, "a [[nodes]] table")
                continue
            drafts.append(self.node(entry, path))
        self.node_checks(drafts)
        if self.problems or len(drafts) != len(raw):
            return None
        out = []
        for d in drafts:
            assert d.name is not None and d.id is not None and d.address is not None
            assert d.client_port is not None and d.fence_action is not None
            assert d.state_port is not None
            assert d.off_hold is not None
            out.append(
                NodeConfig(
                    name=d.name,
                    id=d.id,
                    address=d.address,
                    client_port=d.client_port,
                    state_port=d.state_port,
                    control_socket=d.control_socket,
                    heartbeat_out_pin=d.heartbeat_out_pin,
                    heartbeat_in=dict(d.heartbeat_in),
                    status_led_pin=d.status_led_pin,
                    fence=tuple(dev for _, dev in d.fence),
                    fence_action=d.fence_action,
                    off_hold=d.off_hold,
                    witness=d.witness,
                )
            )
        return tuple(out)

    def node(self, t: Mapping[str, object], path: str) -> _NodeDraft:
        self.unknown_keys(t, path, _NODE_KEYS)
        d = _NodeDraft(path)
        d.name = self.get(t, path, "name", _name)
        raw_name = t.get("name")
        d.raw_name = raw_name if isinstance(raw_name, str) else None
        d.id = self.get(t, path, "id", _int(1, MAX_NODE_ID))
        d.address = self.get(t, path, "address", _unicast)
        d.client_port = self.get(t, path, "client_port", _port, 6379)
        d.state_port_given = "state_port" in t
        if d.client_port is not None:
            d.state_port = self.get(t, path, "state_port", _port, default_state_port(d.client_port))
        elif d.state_port_given:
            d.state_port = self.get(t, path, "state_port", _port)
        d.control_socket = self.get(t, path, "control_socket", _abs_path, None)
        d.heartbeat_out_pin = self.get(t, path, "heartbeat_out_pin", _pin, None)
        d.status_led_pin = self.get(t, path, "status_led_pin", _pin, None)
        action = self.get(t, path, "fence_action", _choice("power-cycle", "off"), "power-cycle")
        d.fence_action = FenceAction(action) if action is not None else None
        d.off_hold = self.get(t, path, "off_hold_ms", _ms(0, 600_000), 3.0)
        d.witness = self.get(t, path, "witness", _witness, None)

        hb = t.get("heartbeat_in", _MISSING)
        hb_path = _join(path, "heartbeat_in")
        if isinstance(hb, Mapping):
            for peer in hb:
                p = self.get(hb, hb_path, peer, _pin)
                if p is not None:
                    d.heartbeat_in[peer] = p
        elif hb is not _MISSING:
            self.bad(hb_path, hb, "a table of peer node name = input pin ({pi2 = 27})")

        fence = t.get("fence", _MISSING)
        fence_path = _join(path, "fence")
        d.fence_given = fence is not _MISSING and fence != []
        if isinstance(fence, list):
            for j, dev in enumerate(fence):
                dpath = f"{fence_path}[{j}]"
                parsed = self.fence_device(dev, dpath)
                if parsed is not None:
                    d.fence.append((dpath, parsed))
        elif fence is not _MISSING:
            self.bad(fence_path, fence, "an array of [[nodes.fence]] tables")
        return d

    def fence_device(self, t: object, path: str) -> FenceDevice | None:
        types = ", ".join(json.dumps(k) for k in _FENCE_KEYS)
        if not isinstance(t, Mapping):
            self.bad(path, t, f"a fence device table with type = {types}")
            return None
        kind = t.get("type", _MISSING)
        if not isinstance(kind, str) or kind not in _FENCE_KEYS:
            self.bad(_join(path, "type"), kind, f"one of {types}")
            return None
        self.unknown_keys(t, path, _FENCE_KEYS[kind])
        before = len(self.problems)
        timeout = self.get(t, path, "timeout_ms", _timeout, 2.0)
        dev: FenceDevice | None = None
        if kind == "gpio-relay":
            pin = self.get(t, path, "pin", _pin)
            driven_by = self.get(t, path, "driven_by", _name)
            active_high = self.get(t, path, "active_high", _bool, True)
            initial = self.get(t, path, "initial_value", _bool, True)
            if None not in (pin, driven_by, active_high, initial, timeout):
                assert pin is not None and driven_by is not None and timeout is not None
                assert active_high is not None and initial is not None
                dev = GpioRelayFence(pin, driven_by, active_high, initial, timeout)
        elif kind == "tasmota":
            url = self.get(t, path, "url", _url)
            user = self.get(t, path, "user", _string, None)
            password = self.get(t, path, "password", _string, None, secret=True)
            channel = self.get(t, path, "channel", _int(1, 32), None)
            if password is not None and "user" not in t:
                self.bad(
                    _join(path, "user"), _MISSING, 'a user name with password (Tasmota: "admin")'
                )
            if len(self.problems) == before:
                assert url is not None and timeout is not None
                dev = TasmotaFence(url, user, password, channel, timeout)
        elif kind == "shelly":
            url = self.get(t, path, "url", _url)
            switch_id = self.get(t, path, "switch_id", _int(0, 255), 0)
            password = self.get(t, path, "password", _string, None, secret=True)
            if len(self.problems) == before:
                assert url is not None and switch_id is not None and timeout is not None
                dev = ShellyFence(url, switch_id, password, timeout)
        else:
            argv = self.get(t, path, "argv", _argv)
            if argv is not None and timeout is not None:
                dev = CommandFence(argv, timeout)
        return dev if len(self.problems) == before else None

    def tcp_ports(self, d: _NodeDraft, ports: dict[tuple[str, int], str]) -> None:
        """Claim ``d``'s client and state ports on its address; report a port already taken."""
        if d.address is None:
            return
        for key, port in (("client_port", d.client_port), ("state_port", d.state_port)):
            if port is None:
                continue
            where = _join(d.path, key)
            owner = ports.setdefault((d.address, port), where)
            if owner == where:
                continue
            hint = ""
            if key == "state_port" and not d.state_port_given:
                hint = "; it is the default (client_port + 10000): set state_port"
            whose = "this node" if owner.startswith(d.path + ".") else "another node"
            self.bad(where, port, f"a port not used by {whose} on {d.address} ({owner}){hint}")
            if key == "client_port" and not d.state_port_given:
                return  # its default state port moves with it: one problem to fix

    def node_checks(self, drafts: list[_NodeDraft]) -> None:
        """What involves more than one entry: uniqueness, references, pins per board."""
        names: dict[str, _NodeDraft] = {}
        ids: dict[int, _NodeDraft] = {}
        ports: dict[tuple[str, int], str] = {}  # (address, TCP port) -> the key that has it
        sockets: dict[tuple[str, Path], _NodeDraft] = {}
        for d in drafts:
            if d.name is not None:
                if d.name in names:
                    self.bad(
                        _join(d.path, "name"),
                        d.name,
                        f"a unique node name ({names[d.name].path} has it)",
                    )
                else:
                    names[d.name] = d
            if d.id is not None:
                if d.id in ids:
                    self.bad(_join(d.path, "id"), d.id, f"a unique id ({ids[d.id].path} has it)")
                else:
                    ids[d.id] = d
            self.tcp_ports(d, ports)
            if d.address is not None and d.control_socket is not None:
                asock = (d.address, d.control_socket)
                if asock in sockets:
                    self.bad(
                        _join(d.path, "control_socket"),
                        str(d.control_socket),
                        f"a path not used by another node on {d.address} "
                        f"({sockets[asock].path}.control_socket)",
                    )
                else:
                    sockets[asock] = d

        # A name that is present but invalid was reported already: references to it are not
        # reported again.
        known = set(names) | {d.raw_name for d in drafts if d.raw_name is not None}
        # pins in use on each node's board: node name -> pin -> the key that claimed it
        pins: dict[str, dict[int, str]] = {n: {} for n in names}

        def claim(board: str | None, pin: int | None, key: str) -> None:
            if board is None or pin is None or board not in pins:
                return
            used = pins[board]
            if pin in used:
                self.bad(key, pin, f"a GPIO pin not already used on {board} ({used[pin]})")
            else:
                used[pin] = key

        # each board's own pins first, so a relay channel driven from it is what clashes
        canonical = [d for d in drafts if d.name is not None and names.get(d.name) is d]
        for d in canonical:
            claim(d.name, d.heartbeat_out_pin, _join(d.path, "heartbeat_out_pin"))
            claim(d.name, d.status_led_pin, _join(d.path, "status_led_pin"))
        for d in canonical:
            assert d.name is not None
            peers = ", ".join(n for n in names if n != d.name) or "none configured"
            for peer, pin in d.heartbeat_in.items():
                key = _join(_join(d.path, "heartbeat_in"), peer)
                if peer == d.name or peer not in known:
                    self.bad(key, pin, f"another node's name as the key ({peers})")
                    continue
                source = names.get(peer)
                if source is not None and source.heartbeat_out_pin is None:
                    self.bad(
                        key,
                        pin,
                        f"a wire from a node with a heartbeat_out_pin ({source.path} "
                        "has none, so this wire would always look flat)",
                    )
                claim(d.name, pin, key)
        for d in canonical:
            peers = ", ".join(n for n in names if n != d.name) or "none configured"
            for dpath, dev in d.fence:
                if not isinstance(dev, GpioRelayFence):
                    continue
                if dev.driven_by == d.name or dev.driven_by not in known:
                    self.bad(
                        _join(dpath, "driven_by"),
                        dev.driven_by,
                        f"the name of the node whose GPIO drives the relay ({peers}; "
                        "a node cannot reliably cut its own power)",
                    )
                else:
                    claim(dev.driven_by, dev.pin, _join(dpath, "pin"))
        if len(drafts) > 1:
            for d in drafts:
                if not d.fence_given:
                    self.bad(
                        _join(d.path, "fence"),
                        _MISSING,
                        "at least one [[nodes.fence]] device (a node that cannot be fenced "
                        "can never be replaced: no fence, no exclusion)",
                    )


def _ms_str(seconds: float) -> str:
    return f"{seconds * 1000:g}"
