"""Fencing: cut a node's power, prove it, and (for a power-cycle) give it back.

No fence, no exclusion: a backup fences the old primary before promoting itself and a primary
fences a backup before dropping it, so a node out of the view is a node without power. The
:class:`Fencer` does the powering; *when* to fence is the protocol's decision
(``FenceRequested`` events), and the verdict goes back to it (``engine.fence_result``).

One fence, step by step:

1. **Health check** (fence-race guard). Both sides of a partition may decide to fence the
   other; the isolated side must not win. The fencer asks its :class:`HealthCheck` first and
   refuses (result REFUSED, with the reason) unless this node can reach its witness. The
   protocol's rank delay (the primary fences first) is the other half of the guard.
2. **Fencing levels**, as in Pacemaker: the target's devices are tried in configuration order,
   and the first that fences wins. A level fails if the device errs or times out, if a
   confirming device still says ON (or cannot tell) after ``off``, or if the wire proof fails.
3. **Confirm off**: devices that report their state are polled until they say OFF, within the
   device's timeout.
4. **Wire proof** (:class:`WireProof`): after the device said off, the target's heartbeat wire
   must go flat within ``wire_proof_timeout``. A wire that keeps toggling means the device cut
   someone else's power (a miswired relay, the wrong plug): the level FAILS, whatever the device
   said. The wire is the only physical evidence; a device's own status only proves what it was
   told.
5. The **verdict** (a :class:`FenceRecord`) is returned at once, so the protocol can go on.
   For ``power-cycle``, the fencer then holds the power off for ``off_hold`` (counted from the
   confirmed off) and switches it on in the background; the final record, with the power-on
   outcome, goes to ``on_record`` (the event log).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from appliance.hw.power import (
    PowerDevice,
    PowerDeviceError,
    PowerState,
    UnusableDevice,
    open_device,
)
from appliance.node.config import ClusterConfig, FenceAction, NodeConfig
from appliance.protocols.failure_detector import WireState

__all__ = [
    "AttemptResult",
    "FenceAttempt",
    "FenceRecord",
    "FenceResult",
    "Fencer",
    "HealthCheck",
    "HealthVerdict",
    "PowerOn",
    "WireProof",
    "tcp_reachable",
]

log = logging.getLogger(__name__)

WireProbe = Callable[[str], WireState]
"""Node name -> this node's latest verdict on that node's heartbeat wire."""

POLL_INTERVAL: Final = 0.01
"""How often status and wire are re-read while waiting for them (bounded by deadlines)."""


class WireProof(enum.Enum):
    """Whether a fence needs the target's heartbeat wire to go flat."""

    NONE = "none"
    """Trust the device."""
    IF_WIRED = "if-wired"
    """Require it when this node has wire evidence for the target (its state is not UNKNOWN)."""
    REQUIRED = "required"
    """Always require it: a target without wire evidence cannot be fenced."""


class FenceResult(enum.Enum):
    FENCED = "fenced"
    FAILED = "failed"
    """Every level failed: the target may still have power."""
    REFUSED = "refused"
    """This node failed its own health check and did not try."""


class AttemptResult(enum.Enum):
    FENCED = "fenced"
    FAILED = "failed"
    SKIPPED = "skipped"
    """The device cannot be operated from this node."""


class PowerOn(enum.Enum):
    """The second half of a power-cycle."""

    NOT_NEEDED = "not-needed"
    """Action ``off``, or the fence did not succeed."""
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FenceAttempt:
    """One fencing level's try."""

    device: str
    result: AttemptResult
    seconds: float
    error: str | None = None
    confirmed: PowerState = PowerState.UNKNOWN
    """What the device said after ``off``."""
    wire: WireState = WireState.UNKNOWN
    """The target's wire when this level finished."""


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """One fence, for the event log and status: who fenced whom, how, and how long it took."""

    fencer: str
    target: str
    action: FenceAction
    result: FenceResult
    started_at: float
    """Wall-clock time (``time.time()``) the fence started, for logs."""
    seconds: float
    """From the request to the verdict."""
    device: str | None = None
    """The device that fenced (the winning level)."""
    attempts: tuple[FenceAttempt, ...] = ()
    error: str | None = None
    """Why it failed or was refused (every level's reason, joined)."""
    wire_before: WireState = WireState.UNKNOWN
    power_on: PowerOn = PowerOn.NOT_NEEDED
    off_seconds: float | None = None
    """How long the power stayed off in a power-cycle (set once it is back on)."""
    power_on_error: str | None = None

    @property
    def ok(self) -> bool:
        """What to tell the protocol: True only if the target is proven without power."""
        return self.result is FenceResult.FENCED

    def describe(self) -> str:
        """One line for the log."""
        head = f"fence of {self.target} by {self.fencer}: {self.result.value}"
        if self.device is not None:
            head += f" via {self.device}"
        head += f" in {self.seconds * 1000:.0f} ms"
        if self.error:
            head += f" ({self.error})"
        if self.power_on is not PowerOn.NOT_NEEDED:
            head += f"; power-on {self.power_on.value}"
            if self.off_seconds is not None:
                head += f" after {self.off_seconds:.1f} s off"
            if self.power_on_error:
                head += f" ({self.power_on_error})"
        return head

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (status output, structured logs)."""
        return {
            "fencer": self.fencer,
            "target": self.target,
            "action": self.action.value,
            "result": self.result.value,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "device": self.device,
            "error": self.error,
            "wire_before": self.wire_before.value,
            "power_on": self.power_on.value,
            "off_seconds": self.off_seconds,
            "power_on_error": self.power_on_error,
            "attempts": [
                {
                    "device": a.device,
                    "result": a.result.value,
                    "seconds": a.seconds,
                    "error": a.error,
                    "confirmed": a.confirmed.value,
                    "wire": a.wire.value,
                }
                for a in self.attempts
            ],
        }


# -- the health check ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    ok: bool
    reason: str


async def tcp_reachable(address: str, port: int, timeout: float) -> str | None:
    """None if ``address`` answers a TCP connection attempt on ``port``, else why not.

    A refused connection counts as reachable: the RST came from the host, which is all the
    witness has to prove. Unprivileged (no ICMP socket needed) and allowed by the unit's
    ``RestrictAddressFamilies=AF_INET``.
    """
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except ConnectionRefusedError:
        return None
    except TimeoutError:
        return f"no answer from {address}:{port} within {timeout:g} s"
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "error")
        return f"cannot reach {address}:{port}: {name} {e.strerror or e}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class HealthCheck:
    """This node's right to fence others: it must see the world the target has left.

    With a ``witness`` (an IPv4 address, e.g. the LAN gateway) the node is healthy while the
    witness answers a TCP connection attempt (refused counts) on ``witness_port``. Without one,
    it needs at least one live heartbeat wire among its *other* wired peers (the target's own
    wire says nothing about this node); with no other wired peer (a two-node cluster, or no
    wires at all) the check passes, and the rank delay alone guards against fence races.
    """

    def __init__(
        self,
        witness: str | None,
        *,
        peer_wires: Callable[[], Mapping[str, WireState]] | None = None,
        witness_port: int = 53,
        timeout: float = 0.5,
        probe: Callable[[str, int, float], Awaitable[str | None]] = tcp_reachable,
    ) -> None:
        self.witness = witness
        self.peer_wires = peer_wires
        self.witness_port = witness_port
        self.timeout = timeout
        self.probe = probe
        self.last: HealthVerdict | None = None

    @classmethod
    def for_node(
        cls,
        node: NodeConfig,
        peer_wires: Callable[[], Mapping[str, WireState]] | None = None,
        **kw: Any,
    ) -> HealthCheck:
        """The check ``node``'s configuration asks for (its ``witness``), with wire evidence
        from ``peer_wires`` (e.g. ``WireInputs.states``)."""
        return cls(node.witness, peer_wires=peer_wires, **kw)

    async def check(self, target: str | None = None) -> HealthVerdict:
        """Whether this node may fence ``target`` now (and why not)."""
        verdict = await self._check(target)
        self.last = verdict
        return verdict

    async def _check(self, target: str | None) -> HealthVerdict:
        if self.witness is not None:
            problem = await self.probe(self.witness, self.witness_port, self.timeout)
            if problem is not None:
                return HealthVerdict(False, f"witness unreachable: {problem}")
            return HealthVerdict(True, f"witness {self.witness} reachable")
        wires = {} if self.peer_wires is None else dict(self.peer_wires())
        others = {peer: s for peer, s in wires.items() if peer != target}
        if not others:
            return HealthVerdict(True, "no witness and no other wired peer to check")
        alive = sorted(peer for peer, s in others.items() if s is WireState.ALIVE)
        if alive:
            return HealthVerdict(True, f"peer wire alive: {', '.join(alive)}")
        shown = ", ".join(f"{p}={s.value}" for p, s in sorted(others.items()))
        return HealthVerdict(False, f"no live peer heartbeat wire ({shown})")


# -- the fencer ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Cycle:
    """A power-cycle whose power-on is still to come."""

    record: FenceRecord
    task: asyncio.Task[None] | None = None


class Fencer:
    """Runs fences from node ``me`` against the other nodes of ``cluster``.

    Construct it when the agent starts: it opens every relay channel this node drives at its
    ``initial_value`` (keeping those neighbours powered); HTTP and command devices hold
    nothing between operations. ``fence()`` is the hook for ``FenceRequested``; ``aclose()``
    at shutdown finishes pending power-ons and releases the pins.
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        me: NodeConfig,
        *,
        pin_factory: Any = None,
        health: HealthCheck | None = None,
        wire_probe: WireProbe | None = None,
        wire_proof: WireProof = WireProof.IF_WIRED,
        wire_proof_timeout: float = 2.0,
        on_record: Callable[[FenceRecord], None] | None = None,
        devices: Mapping[str, Iterable[PowerDevice]] | None = None,
        history: int = 32,
    ) -> None:
        """``devices`` (node name -> its devices in level order) replaces the ones the
        configuration describes; tests and the lab use it."""
        self.cluster = cluster
        self.me = me
        self.health = health
        self.wire_probe = wire_probe
        self.wire_proof = wire_proof
        self.wire_proof_timeout = wire_proof_timeout
        self.on_record = on_record
        self.records: deque[FenceRecord] = deque(maxlen=history)
        """The latest final records, newest last (for status)."""
        self.devices: dict[str, tuple[PowerDevice, ...]] = {}
        if devices is not None:
            self.devices = {name: tuple(devs) for name, devs in devices.items()}
        else:
            try:
                for node in cluster.nodes:
                    if node.name != me.name:
                        self.devices[node.name] = tuple(
                            open_device(spec, target=node.name, me=me.name, pin_factory=pin_factory)
                            for spec in node.fence
                        )
            except BaseException:
                self.close()
                raise
        self._in_flight: dict[str, asyncio.Future[FenceRecord]] = {}
        self._cycles: dict[str, _Cycle] = {}

    # -- the hook ----------------------------------------------------------------------------

    async def fence(self, target: NodeConfig | str) -> FenceRecord:
        """Fence ``target`` and return the verdict (``record.ok`` for ``fence_result``).

        Concurrent requests for the same node share one fence. A request that arrives while a
        power-cycle of that node is holding its power off gets that fence's record at once: the
        node is still off, so it is still fenced.
        """
        node = self._node(target)
        cycle = self._cycles.get(node.name)
        if cycle is not None and cycle.record.ok:
            return cycle.record
        pending = self._in_flight.get(node.name)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[FenceRecord] = loop.create_future()
        self._in_flight[node.name] = fut
        try:
            record, dev = await self._fence(node)
        except asyncio.CancelledError:
            fut.cancel()  # requests that joined this fence are cancelled with it
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning if nobody joined
            raise
        finally:
            del self._in_flight[node.name]
        fut.set_result(record)
        if dev is not None and node.fence_action is FenceAction.POWER_CYCLE:
            self._start_power_on(node, record, dev)
        else:
            self._finish(record)
        return record

    async def aclose(self) -> None:
        """Wait for pending power-ons (each bounded by ``off_hold`` plus a device timeout), then
        release the devices. A node must not stay off because its fencer was stopped."""
        tasks = [c.task for c in self._cycles.values() if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Release every device now (pending power-ons are abandoned)."""
        for cycle in self._cycles.values():
            if cycle.task is not None:
                cycle.task.cancel()
        for devs in self.devices.values():
            for dev in devs:
                try:
                    dev.close()
                except Exception:
                    log.exception("closing %r", dev)

    # -- one fence ---------------------------------------------------------------------------

    def _node(self, target: NodeConfig | str) -> NodeConfig:
        if isinstance(target, NodeConfig):
            return target
        for n in self.cluster.nodes:
            if n.name == target:
                return n
        raise KeyError(f"no node named {target!r}")

    def _wire(self, name: str) -> WireState:
        if self.wire_probe is None:
            return WireState.UNKNOWN
        try:
            return self.wire_probe(name)
        except Exception:
            log.exception("wire probe for %s raised", name)
            return WireState.UNKNOWN

    async def _fence(self, node: NodeConfig) -> tuple[FenceRecord, PowerDevice | None]:
        """The verdict, and the device that fenced (None if none did)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        base = FenceRecord(
            fencer=self.me.name,
            target=node.name,
            action=node.fence_action,
            result=FenceResult.FAILED,
            started_at=time.time(),
            seconds=0.0,
            wire_before=self._wire(node.name),
        )
        if self.health is not None:
            try:
                verdict = await self.health.check(node.name)
            except Exception as e:  # a broken check must not fence, nor kill the caller
                log.exception("health check raised")
                verdict = HealthVerdict(False, f"health check raised {e!r}")
            if not verdict.ok:
                refused = replace(
                    base,
                    result=FenceResult.REFUSED,
                    seconds=loop.time() - t0,
                    error=f"this node is not healthy enough to fence: {verdict.reason}",
                )
                return refused, None
        devices = self.devices.get(node.name, ())
        attempts: list[FenceAttempt] = []
        for dev in devices:
            attempt = await self._attempt(node, dev, base.wire_before)
            attempts.append(attempt)
            if attempt.result is AttemptResult.FENCED:
                fenced = replace(
                    base,
                    result=FenceResult.FENCED,
                    seconds=loop.time() - t0,
                    device=dev.description,
                    attempts=tuple(attempts),
                    power_on=(
                        PowerOn.PENDING
                        if node.fence_action is FenceAction.POWER_CYCLE
                        else PowerOn.NOT_NEEDED
                    ),
                )
                return fenced, dev
        reasons = "; ".join(f"{a.device}: {a.error}" for a in attempts)
        failed = replace(
            base,
            seconds=loop.time() - t0,
            attempts=tuple(attempts),
            error=reasons or "no fence device configured",
        )
        return failed, None

    async def _attempt(self, node: NodeConfig, dev: PowerDevice, before: WireState) -> FenceAttempt:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def done(result: AttemptResult, error: str | None = None, **kw: Any) -> FenceAttempt:
            return FenceAttempt(dev.description, result, loop.time() - t0, error, **kw)

        if isinstance(dev, UnusableDevice):
            return done(AttemptResult.SKIPPED, dev.reason)
        try:
            await dev.off()
            confirmed = await self._confirm_off(dev)
        except PowerDeviceError as e:
            return done(AttemptResult.FAILED, str(e), wire=self._wire(node.name))
        except Exception as e:  # a driver bug is a failed level, never an unhandled fence
            log.exception("fence device %s raised", dev.description)
            return done(
                AttemptResult.FAILED, f"{dev.description}: {e!r}", wire=self._wire(node.name)
            )
        if confirmed is PowerState.ON:
            return done(
                AttemptResult.FAILED,
                "the device still reports ON after off",
                confirmed=confirmed,
                wire=self._wire(node.name),
            )
        if confirmed is PowerState.UNKNOWN and dev.confirms:
            return done(
                AttemptResult.FAILED,
                "the device could not confirm the power is off",
                confirmed=confirmed,
                wire=self._wire(node.name),
            )
        wire, problem = await self._wire_proof(node.name, before)
        if problem is not None:
            return done(AttemptResult.FAILED, problem, confirmed=confirmed, wire=wire)
        return done(AttemptResult.FENCED, confirmed=confirmed, wire=wire)

    async def _confirm_off(self, dev: PowerDevice) -> PowerState:
        """Poll ``status()`` until OFF, within the device's timeout; the last answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + dev.timeout
        while True:
            state = await dev.status()
            if state is not PowerState.ON or loop.time() >= deadline:
                return state
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))

    async def _wire_proof(self, name: str, before: WireState) -> tuple[WireState, str | None]:
        """Wait for the target's wire to go flat; (its last state, why the proof failed)."""
        wire = self._wire(name)
        if self.wire_proof is WireProof.NONE:
            return wire, None
        if wire is WireState.UNKNOWN and before is WireState.UNKNOWN:
            if self.wire_proof is WireProof.REQUIRED:
                return wire, "no heartbeat-wire evidence for the target (wire proof required)"
            return wire, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wire_proof_timeout
        while wire is not WireState.FLAT and loop.time() < deadline:
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, deadline - loop.time())))
            wire = self._wire(name)
        if wire is WireState.FLAT:
            return wire, None
        return wire, (
            f"heartbeat wire still {wire.value} {self.wire_proof_timeout:g} s after the device "
            "said off: it did not cut this node's power"
        )

    # -- power-cycle -------------------------------------------------------------------------

    def _start_power_on(self, node: NodeConfig, record: FenceRecord, dev: PowerDevice) -> None:
        cycle = _Cycle(record)
        self._cycles[node.name] = cycle
        cycle.task = asyncio.get_running_loop().create_task(self._power_on(node, record, dev))

    async def _power_on(self, node: NodeConfig, record: FenceRecord, dev: PowerDevice) -> None:
        loop = asyncio.get_running_loop()
        off_at = loop.time()  # the verdict: the power was confirmed off (and proven) by now
        final = record
        try:
            await asyncio.sleep(node.off_hold)
            error: str | None = None
            for _ in range(2):  # one retry: a plug that missed one request should not strand
                try:
                    await dev.on()
                    error = None
                    break
                except PowerDeviceError as e:
                    error = str(e)
            final = replace(
                record,
                power_on=PowerOn.FAILED if error else PowerOn.DONE,
                off_seconds=loop.time() - off_at,
                power_on_error=error,
            )
        except asyncio.CancelledError:
            final = replace(record, power_on=PowerOn.FAILED, power_on_error="fencer closed")
            raise
        finally:
            self._cycles.pop(node.name, None)
            self._finish(final)

    def _finish(self, record: FenceRecord) -> None:
        self.records.append(record)
        level = (
            logging.INFO if record.ok and record.power_on is not PowerOn.FAILED else (logging.ERROR)
        )
        log.log(level, "%s", record.describe())
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:
                log.exception("fence record callback raised")
