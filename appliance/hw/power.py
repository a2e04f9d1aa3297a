"""Power devices that can cut a node's supply: the fence devices of the configuration.

Each :class:`PowerDevice` offers ``off()``, ``on()`` and ``status()`` as coroutines, every one
bounded by the device's ``timeout`` (a fence that hangs is worse than one that fails: the
fencing levels can only move on to the next device once this one has given up). Failures raise
:class:`PowerDeviceError` with a sentence for the event log; ``status()`` answers
:attr:`PowerState.UNKNOWN` only when the device cannot tell (a command without a status verb),
never to hide an error.

Devices:

* :class:`RelayDevice`: a relay channel on a gpiozero ``OutputDevice``; *on* means "the fenced
  node has power", ``active_high`` maps that onto the pin level (most boards are active-low).
  Only the node named ``driven_by`` can use it; it opens the pin at start-up with
  ``initial_value`` so its neighbour stays powered while the agent runs.
* :class:`TasmotaDevice`: ``/cm?cmnd=Power%20Off`` / ``Power%20On`` / ``Power`` (``PowerN``
  for a strip's outlet N), ``user``/``password`` as query parameters (Tasmota's own scheme);
  the JSON reply (``{"POWER":"OFF"}``) is checked, so a plug that answers ``ON`` to
  ``Power Off`` fails the fence instead of passing it.
* :class:`ShellyDevice`: Gen2+ RPC over HTTP GET, ``/rpc/Switch.Set?id=N&on=false`` and
  ``/rpc/Switch.GetStatus?id=N``; with a password, HTTP digest authentication (RFC 7616,
  SHA-256 as the Gen2 firmware uses, user ``admin``).
* :class:`CommandDevice`: ``argv + [node, action]`` with action ``off``, ``on`` or ``status``;
  exit status 0 means done, and ``status`` prints ``on`` or ``off`` (anything else: UNKNOWN).

HTTP uses the standard library's ``http.client`` in a worker thread (``asyncio.to_thread``):
it handles chunked replies, keep-alive quirks and HTTPS, where a hand-written client over
asyncio streams would have to re-implement them. The socket timeout bounds each network
operation inside the thread and ``asyncio.wait_for`` bounds the whole call for the caller.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import hashlib
import http.client
import json
import os
import re
import urllib.parse
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from gpiozero import OutputDevice

from appliance.node.config import (
    CommandFence,
    FenceDevice,
    GpioRelayFence,
    ShellyFence,
    TasmotaFence,
)

__all__ = [
    "CommandDevice",
    "PowerDevice",
    "PowerDeviceError",
    "PowerState",
    "RelayDevice",
    "ShellyDevice",
    "TasmotaDevice",
    "UnusableDevice",
    "open_device",
]

T = TypeVar("T")

MAX_REPLY_BYTES: Final = 64 * 1024
"""A smart plug's JSON reply is a few hundred bytes; more is not a plug."""


class PowerState(enum.Enum):
    """What a device says about the power it switches."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"
    """The device cannot tell (e.g. a command without a ``status`` verb)."""


class PowerDeviceError(Exception):
    """An operation on a power device failed; the message says why, for the event log."""


class PowerDevice(abc.ABC):
    """One fence device for one node. Subclasses implement ``_off``, ``_on`` and ``_status``.

    The public coroutines add the device's ``timeout`` and turn every failure into
    :class:`PowerDeviceError`, so the fencer handles one exception type from every kind.
    """

    kind: str = "device"
    confirms: bool = True
    """Whether ``status()`` is expected to answer ON or OFF. A device that confirms but
    answers UNKNOWN after ``off()`` has not proven anything, and the fence fails."""

    def __init__(self, target: str, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"device timeout must be positive, got {timeout!r}")
        self.target = target
        self.timeout = timeout

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Which device this is, for logs (never a password)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} for {self.target}>"

    async def off(self) -> None:
        """Cut the power; return once the device accepted the command."""
        await self._bounded("off", self._off())

    async def on(self) -> None:
        """Restore the power."""
        await self._bounded("on", self._on())

    async def status(self) -> PowerState:
        """What the device says the power is now."""
        return await self._bounded("status", self._status())

    def close(self) -> None:
        """Release what the device holds (a GPIO line); the default holds nothing."""
        return None

    async def _bounded(self, what: str, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self.timeout)
        except TimeoutError:
            raise PowerDeviceError(
                f"{self.description}: {what} timed out after {self.timeout:g} s"
            ) from None
        except PowerDeviceError:
            raise
        except OSError as e:
            raise PowerDeviceError(f"{self.description}: {what}: {e.strerror or e}") from None

    @abc.abstractmethod
    async def _off(self) -> None: ...

    @abc.abstractmethod
    async def _on(self) -> None: ...

    @abc.abstractmethod
    async def _status(self) -> PowerState: ...


class UnusableDevice(PowerDevice):
    """A configured device this node cannot operate (a relay driven by another node's GPIO).

    It keeps its place in the fencing levels so the record says why the level was skipped.
    """

    kind = "unusable"
    confirms = False

    def __init__(self, target: str, spec: FenceDevice, reason: str) -> None:
        super().__init__(target, spec.timeout)
        self.spec = spec
        self.reason = reason

    @property
    def description(self) -> str:
        return f"{self.spec.kind} ({self.reason})"

    async def _off(self) -> None:
        raise PowerDeviceError(self.description)

    async def _on(self) -> None:
        raise PowerDeviceError(self.description)

    async def _status(self) -> PowerState:
        raise PowerDeviceError(self.description)


# -- GPIO relay ----------------------------------------------------------------------------


class RelayDevice(PowerDevice):
    """A relay channel driven by this node's GPIO pin (gpiozero ``OutputDevice``).

    The pin is opened at construction with ``initial_value`` (normally *on*: the neighbour keeps
    its power while this agent runs), so build relay devices when the agent starts, not when it
    first fences. ``status()`` reads back the level this node drives: it proves what the relay
    is told, not that the neighbour lost power; the heartbeat wire is that proof.
    """

    kind = "gpio-relay"

    def __init__(self, target: str, spec: GpioRelayFence, pin_factory: Any = None) -> None:
        super().__init__(target, spec.timeout)
        self.spec = spec
        self._dev = OutputDevice(
            spec.pin,
            active_high=spec.active_high,
            initial_value=spec.initial_value,
            pin_factory=pin_factory,
        )

    @property
    def description(self) -> str:
        level = "active-high" if self.spec.active_high else "active-low"
        return f"gpio-relay GPIO{self.spec.pin} ({level})"

    async def _off(self) -> None:
        self._dev.off()

    async def _on(self) -> None:
        self._dev.on()

    async def _status(self) -> PowerState:
        return PowerState.ON if self._dev.value else PowerState.OFF

    def close(self) -> None:
        self._dev.close()


# -- HTTP smart plugs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


def _split_base(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path prefix without a trailing slash) of a device's base URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) base URL: {url!r}")
    return parts.scheme, parts.hostname, parts.port, parts.path.rstrip("/")


def _http_get(
    base: str, target: str, timeout: float, headers: Mapping[str, str] | None = None
) -> HttpReply:
    """One blocking GET of ``base`` + ``target`` (a path with query); run in a thread."""
    scheme, host, port, prefix = _split_base(base)
    conn_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_class(host, port, timeout=timeout)
    try:
        conn.request("GET", prefix + target, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read(MAX_REPLY_BYTES + 1)
        return HttpReply(resp.status, resp.reason, dict(resp.getheaders()), body)
    finally:
        conn.close()


class HttpPlug(PowerDevice):
    """Common ground of the HTTP devices: a base URL and GET requests answered with JSON."""

    def __init__(self, target: str, url: str, timeout: float) -> None:
        super().__init__(target, timeout)
        _split_base(url)  # fail at start-up, not at the first fence
        self.url = url.rstrip("/")

    async def _get(self, target: str, headers: Mapping[str, str] | None = None) -> HttpReply:
        try:
            return await asyncio.to_thread(_http_get, self.url, target, self.timeout, headers)
        except (http.client.HTTPException, ValueError) as e:
            raise PowerDeviceError(f"{self.description}: bad HTTP exchange: {e!r}") from None

    def _json(self, reply: HttpReply) -> dict[str, Any]:
        if len(reply.body) > MAX_REPLY_BYTES:
            raise PowerDeviceError(f"{self.description}: reply larger than {MAX_REPLY_BYTES} B")
        try:
            value = json.loads(reply.body)
        except ValueError:
            raise PowerDeviceError(
                f"{self.description}: HTTP {reply.status}, not JSON: {_snippet(reply.body)}"
            ) from None
        if not isinstance(value, dict):
            raise PowerDeviceError(f"{self.description}: unexpected reply {_snippet(reply.body)}")
        return value


def _snippet(body: bytes, limit: int = 120) -> str:
    text = body.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


class TasmotaDevice(HttpPlug):
    """A Tasmota plug or strip outlet (``/cm?cmnd=...``)."""

    kind = "tasmota"

    def __init__(self, target: str, spec: TasmotaFence) -> None:
        super().__init__(target, spec.url, spec.timeout)
        self.spec = spec
        self._power = "Power" if spec.channel is None else f"Power{spec.channel}"

    @property
    def description(self) -> str:
        return f"tasmota {self.url} {self._power}"

    async def _command(self, cmnd: str) -> PowerState:
        query: list[tuple[str, str]] = []
        if self.spec.user is not None:
            query.append(("user", self.spec.user))
        if self.spec.password is not None:
            query.append(("password", self.spec.password))
        query.append(("cmnd", cmnd))
        # %20 for a space, as Tasmota documents it (urlencode would write "+")
        text = "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in query)
        reply = await self._get("/cm?" + text)
        if reply.status == 401:
            raise PowerDeviceError(f"{self.description}: authentication failed (HTTP 401)")
        if reply.status != 200:
            raise PowerDeviceError(
                f"{self.description}: HTTP {reply.status} {reply.reason}: {_snippet(reply.body)}"
            )
        doc = self._json(reply)
        if "WARNING" in doc:  # e.g. "Need user=<username>&password=<password>"
            raise PowerDeviceError(f"{self.description}: {doc['WARNING']}")
        keys = [self._power.upper()]
        if self.spec.channel is None:
            keys.append("POWER1")  # a multi-relay device names its first relay POWER1
        for key in keys:
            if key in doc:
                return _on_off(doc[key], self.description)
        raise PowerDeviceError(f"{self.description}: no {keys[0]} in reply {_snippet(reply.body)}")

    async def _off(self) -> None:
        state = await self._command(f"{self._power} Off")
        if state is not PowerState.OFF:
            raise PowerDeviceError(f"{self.description}: answered {state.name} to Power Off")

    async def _on(self) -> None:
        state = await self._command(f"{self._power} On")
        if state is not PowerState.ON:
            raise PowerDeviceError(f"{self.description}: answered {state.name} to Power On")

    async def _status(self) -> PowerState:
        return await self._command(self._power)


def _on_off(value: object, what: str) -> PowerState:
    text = str(value).strip().upper()
    if text in ("ON", "1", "TRUE"):
        return PowerState.ON
    if text in ("OFF", "0", "FALSE"):
        return PowerState.OFF
    raise PowerDeviceError(f"{what}: power state {value!r} is neither ON nor OFF")


# digest authentication (RFC 7616) as Shelly Gen2 uses it
_DIGEST_ALGORITHMS: Final = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
_AUTH_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_digest_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``WWW-Authenticate: Digest ...`` header, or None if not digest."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    return {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _AUTH_PARAM.finditer(rest)}


def digest_authorization(
    challenge: Mapping[str, str],
    user: str,
    password: str,
    method: str,
    uri: str,
    nc: int,
    cnonce: str,
) -> str:
    """The ``Authorization`` header answering ``challenge`` (qop=auth)."""
    algorithm = challenge.get("algorithm", "MD5").upper()
    h = _DIGEST_ALGORITHMS.get(algorithm)
    if h is None:
        raise PowerDeviceError(f"unsupported digest algorithm {algorithm!r}")
    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    ha1 = hx(f"{user}:{realm}:{password}")
    ha2 = hx(f"{method}:{uri}")
    ncv = f"{nc:08x}"
    response = hx(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
    fields = [
        f'username="{user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f"algorithm={algorithm}",
        f'response="{response}"',
        "qop=auth",
        f"nc={ncv}",
        f'cnonce="{cnonce}"',
    ]
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)


class ShellyDevice(HttpPlug):
    """A Shelly Gen2+ switch over HTTP RPC; digest authentication when a password is set."""

    kind = "shelly"
    USER: Final = "admin"
    """Gen2 firmware has one user, always ``admin``."""

    def __init__(self, target: str, spec: ShellyFence) -> None:
        super().__init__(target, spec.url, spec.timeout)
        self.spec = spec
        self._challenge: dict[str, str] | None = None
        self._nc = 0

    @property
    def description(self) -> str:
        return f"shelly {self.url} switch {self.spec.switch_id}"

    async def _rpc(self, method: str, **params: str | int) -> dict[str, Any]:
        target = f"/rpc/{method}?" + urllib.parse.urlencode({"id": self.spec.switch_id, **params})
        for attempt in range(2):
            headers: dict[str, str] = {}
            if self.spec.password is not None and self._challenge is not None:
                self._nc += 1
                headers["Authorization"] = digest_authorization(
                    self._challenge,
                    self.USER,
                    self.spec.password,
                    "GET",
                    self.url_prefix + target,
                    self._nc,
                    os.urandom(8).hex(),
                )
            reply = await self._get(target, headers)
            if reply.status != 401:
                break
            if self.spec.password is None:
                raise PowerDeviceError(
                    f"{self.description}: the device asks for a password (HTTP 401); "
                    "set password in its fence entry"
                )
            challenge = parse_digest_challenge(_header(reply.headers, "WWW-Authenticate"))
            if challenge is None or attempt == 1:
                # the answer to a fresh challenge was refused: the password is wrong
                self._challenge = None
                raise PowerDeviceError(
                    f"{self.description}: authentication failed (HTTP 401): wrong password?"
                )
            # first contact, or our cached nonce expired: answer the fresh challenge once
            self._challenge, self._nc = challenge, 0
        doc = self._json(reply)
        if reply.status != 200:
            message = doc.get("message", _snippet(reply.body))
            raise PowerDeviceError(f"{self.description}: HTTP {reply.status}: {message}")
        return doc

    @property
    def url_prefix(self) -> str:
        return _split_base(self.url)[3]

    async def _off(self) -> None:
        await self._rpc("Switch.Set", on="false")

    async def _on(self) -> None:
        await self._rpc("Switch.Set", on="true")

    async def _status(self) -> PowerState:
        doc = await self._rpc("Switch.GetStatus")
        output = doc.get("output")
        if not isinstance(output, bool):
            raise PowerDeviceError(f"{self.description}: no boolean output in {doc!r}")
        return PowerState.ON if output else PowerState.OFF


def _header(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return ""


# -- command -------------------------------------------------------------------------------


class CommandDevice(PowerDevice):
    """A program run as ``argv + [node, action]``; exit status 0 means done.

    ``status`` is optional for such programs: one that exits non-zero or prints something other
    than ``on``/``off`` is taken not to support it, so a command device does not confirm.
    """

    kind = "command"
    confirms = False

    def __init__(self, target: str, spec: CommandFence) -> None:
        super().__init__(target, spec.timeout)
        self.spec = spec

    @property
    def description(self) -> str:
        return f"command {' '.join(self.spec.argv)}"

    async def _run(self, action: str) -> tuple[int, bytes, bytes]:
        argv = [*self.spec.argv, self.target, action]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise PowerDeviceError(f"{self.description}: cannot start: {e}") from None
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:  # the timeout: do not leave the program running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out, err

    async def _act(self, action: str) -> None:
        code, _, err = await self._run(action)
        if code != 0:
            text = err.decode(errors="replace").strip()
            raise PowerDeviceError(f"{self.description} {action}: exit status {code}: {text}")

    async def _off(self) -> None:
        await self._act("off")

    async def _on(self) -> None:
        await self._act("on")

    async def _status(self) -> PowerState:
        code, out, _ = await self._run("status")
        words = out.decode(errors="replace").split()
        if code != 0 or not words:
            return PowerState.UNKNOWN
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(
            words[0].lower(), PowerState.UNKNOWN
        )


# -- building ------------------------------------------------------------------------------


def open_device(spec: FenceDevice, *, target: str, me: str, pin_factory: Any = None) -> PowerDevice:
    """The device ``spec`` (one of ``target``'s fence entries) as operated from node ``me``.

    A relay channel driven by another node's GPIO is an :class:`UnusableDevice` here: only its
    ``driven_by`` node has the pin.
    """
    if isinstance(spec, GpioRelayFence):
        if spec.driven_by != me:
            return UnusableDevice(target, spec, f"GPIO{spec.pin} is on {spec.driven_by}")
        return RelayDevice(target, spec, pin_factory)
    if isinstance(spec, TasmotaFence):
        return TasmotaDevice(target, spec)
    if isinstance(spec, ShellyFence):
        return ShellyDevice(target, spec)
    return CommandDevice(target, spec)
