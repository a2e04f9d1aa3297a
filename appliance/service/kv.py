"""The sample key-value service: a deterministic, Redis-compatible string store.

:class:`KVStore` executes Redis commands (``argv`` as a list of ``bytes``, as the RESP parser
delivers them) and returns an :class:`Outcome`: the reply, the *effects* (the state update the
command made, in a compact binary encoding) and whether the command was a write. It knows nothing
of replication beyond the :class:`Determinism` facade it is given:

* every clock read goes through ``det.now_ms()`` (read at most once per command, lazily: only a
  command that needs the time - a key with an expiry is touched, a relative expiry is set -
  asks for it), and every random choice through ``det.random_below(n)``. Fed the same commands
  and the same facade values, two stores therefore end in the same state (semi-active
  replication);
* the effects of a command are enough to reproduce its state change without executing it:
  :meth:`KVStore.apply_effects` on a semi-passive backup yields the identical state, including
  the deletion of keys the primary found expired while executing (a lazily expired key is
  deleted *as an effect*, so a backup deletes it at the same point in the history).

Commands follow Redis 7.0 semantics, replies and error texts, checked byte for byte against a
real ``redis-server`` by ``tests/service/test_kv_parity.py``; the deliberate differences are
listed there (one database, sorted ``KEYS``, a hash-ordered ``SCAN`` cursor, expiry times mixed
into ``DEBUG DIGEST``, ...). Only the string type exists.

Expiry is Redis' model: a key whose expiry time is ``at`` is alive while ``now <= at``; it is
deleted lazily when a command touches it after that, when ``EXPIRE`` & co. are given a time
that is already past, and - standing in for Redis' active expiry cycle - by
:meth:`KVStore.expire_due`, which the node may run as an ordered operation.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import operator
import re
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol, TypeVar

from appliance.protocols.steps import Steps, drain
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer
from appliance.service.resp import Error, RespValue, SimpleString

__all__ = [
    "PROTO_MAX_BULK_LEN",
    "REDIS_VERSION",
    "Determinism",
    "KVStore",
    "Outcome",
    "SnapshotSteps",
    "glob_match",
]

REDIS_VERSION: Final = "7.0.0-appliance"
"""What ``INFO server`` reports as ``redis_version`` (clients look at the major version)."""

PROTO_MAX_BULK_LEN: Final = 512 * 1024 * 1024
"""Redis' default ``proto-max-bulk-len``: ``APPEND`` refuses to grow a string past it."""

_LLONG_MAX: Final = 2**63 - 1
_LLONG_MIN: Final = -(2**63)
_INT_MAX: Final = 2**31 - 1
_INT_MIN: Final = -(2**31)
_ULONG_MAX: Final = 2**64 - 1

# ------------------------------------------------------------------------------------------
# The facade and the result


class Determinism(Protocol):
    """The VDF facade: the only sources of non-determinism the service may use."""

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch, as the primary read them."""
        ...

    def random_below(self, n: int) -> int:
        """A uniformly random integer in ``[0, n)``, as the primary drew it."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What executing one command produced."""

    reply: RespValue
    effects: bytes
    """The state update the command made (``b""`` when it changed nothing). Semi-passive
    replication ships this to the backups instead of the command. Note that a *read* can have
    effects too: a ``GET`` of a key that has just expired deletes it."""
    write: bool
    """True for a write command (``SET``, ``DEL``, ... even when it changed nothing or failed),
    and for any command that had effects."""


# ------------------------------------------------------------------------------------------
# Replies and helpers that mirror Redis' C code

_OK: Final = SimpleString("OK")
_PONG: Final = SimpleString("PONG")
_SYNTAX: Final = Error("ERR syntax error")
_NOT_INT: Final = Error("ERR value is not an integer or out of range")
_OVERFLOW: Final = Error("ERR increment or decrement would overflow")
_TOO_BIG: Final = Error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
# Only strings exist, so no command can meet another type yet; a future list/hash type must
# answer this wherever Redis calls checkType():
WRONGTYPE: Final = Error("WRONGTYPE Operation against a key holding the wrong kind of value")

_INT_RE: Final = re.compile(rb"0|-?[1-9][0-9]*")


def _parse_ll(raw: bytes) -> int | None:
    """Redis' ``string2ll``: canonical decimal only (no ``+``, spaces, leading zeros, ``-0``)."""
    if len(raw) >= 21 or _INT_RE.fullmatch(raw) is None:
        return None
    value = int(raw)
    return value if _LLONG_MIN <= value <= _LLONG_MAX else None


def _wrap64(value: int) -> int:
    """Two's-complement wrap to a signed 64-bit integer, as C arithmetic does on overflow."""
    value &= _ULONG_MAX
    return value - 2**64 if value > _LLONG_MAX else value


def _cstr(raw: bytes) -> bytes:
    """The argument as C sees it through ``char *`` (``strcasecmp``, ``%s``): up to a NUL."""
    return raw.split(b"\0", 1)[0]


def _text(raw: bytes) -> str:
    """Client bytes to ``str`` for an error message; encode() gives back the same bytes."""
    return raw.decode("utf-8", "surrogateescape")


def _format_error(message: bytes) -> Error:
    """Like ``addReplyErrorFormat``: trim CR/LF at both ends (the middle ones become spaces
    in :func:`~appliance.service.resp.encode`) and prefix ``ERR``."""
    return Error("ERR " + _text(message.strip(b"\r\n")))


def _arity_error(fullname: str) -> Error:
    return Error(f"ERR wrong number of arguments for '{fullname}' command")


def _expire_error(fullname: str) -> Error:
    return Error(f"ERR invalid expire time in '{fullname}' command")


def _parse_cursor(raw: bytes) -> int | None:
    """Redis' ``parseScanCursorOrReply``: ``strtoul(ptr, &end, 10)`` with its quirks (an empty
    cursor is 0, ``-1`` wraps around, parsing stops at a NUL byte)."""
    text = _cstr(raw)
    if not text:
        return 0
    if text[:1] in (b" ", b"\t", b"\n", b"\v", b"\f", b"\r"):
        return None
    sign = text[:1]
    digits = text[1:] if sign in (b"+", b"-") else text
    if not digits or not digits.isdigit():
        return None
    value = int(digits)
    if value > _ULONG_MAX:
        return None
    return (-value) & _ULONG_MAX if sign == b"-" else value


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# ------------------------------------------------------------------------------------------
# Glob patterns (KEYS, SCAN MATCH): Redis' stringmatchlen(), quirks included

_STAR: Final = -1
_ANY: Final = -2
_CLASS: Final = -3


class _Token(NamedTuple):
    kind: int  # _STAR, _ANY, _CLASS, or >= 0: a literal byte
    negate: bool = False
    ranges: tuple[tuple[int, int], ...] = ()


def _compile_glob(pattern: bytes) -> list[_Token]:
    """Tokenize a pattern exactly as ``stringmatchlen`` walks it.

    How far the C code advances through the pattern never depends on the string, so the walk
    can be done once. Reads past the end see the NUL terminator of the sds string, as in C.
    """
    n = len(pattern)

    def at(i: int) -> int:
        return pattern[i] if i < n else 0

    tokens: list[_Token] = []
    i = 0
    left = n  # patternLen
    while left > 0:
        c = pattern[i]
        if c == 0x2A:  # '*': consecutive stars collapse
            if not tokens or tokens[-1].kind != _STAR:
                tokens.append(_Token(_STAR))
        elif c == 0x3F:  # '?'
            tokens.append(_Token(_ANY))
        elif c == 0x5B:  # '['
            i += 1
            left -= 1
            negate = at(i) == 0x5E  # '^'
            if negate:
                i += 1
                left -= 1
            ranges: list[tuple[int, int]] = []
            while True:
                if at(i) == 0x5C and left >= 2:  # '\\': escaped member
                    i += 1
                    left -= 1
                    ranges.append((pattern[i], pattern[i]))
                elif at(i) == 0x5D:  # ']'
                    break
                elif left == 0:  # unterminated class: it ends with the pattern
                    i -= 1
                    left += 1
                    break
                elif left >= 3 and at(i + 1) == 0x2D:  # 'a-z' (either way round)
                    lo, hi = pattern[i], pattern[i + 2]
                    ranges.append((min(lo, hi), max(lo, hi)))
                    i += 2
                    left -= 2
                else:
                    ranges.append((pattern[i], pattern[i]))
                i += 1
                left -= 1
            tokens.append(_Token(_CLASS, negate, tuple(ranges)))
        elif c == 0x5C and left >= 2:  # '\\' escapes the next byte
            i += 1
            left -= 1
            tokens.append(_Token(pattern[i]))
        else:
            tokens.append(_Token(c))
        i += 1
        left -= 1
    return tokens


def _token_matches(token: _Token, byte: int) -> bool:
    if token.kind >= 0:
        return token.kind == byte
    if token.kind == _ANY:
        return True
    hit = any(lo <= byte <= hi for lo, hi in token.ranges)
    return hit != token.negate


def _match_tokens(tokens: list[_Token], string: bytes) -> bool:
    if not string:  # stringmatchlen never enters its loop: only the empty pattern matches
        return not tokens
    # Every non-star token consumes exactly one byte, so the classic greedy matcher (backtrack
    # to the last star only) decides the same thing as Redis' recursion, without recursing.
    ti = si = 0
    star = -1
    mark = 0
    nt, ns = len(tokens), len(string)
    while si < ns:
        if ti < nt and tokens[ti].kind == _STAR:
            star, mark = ti, si
            ti += 1
        elif ti < nt and _token_matches(tokens[ti], string[si]):
            ti += 1
            si += 1
        elif star >= 0:
            mark += 1
            si = mark
            ti = star + 1
        else:
            return False
    while ti < nt and tokens[ti].kind == _STAR:
        ti += 1
    return ti == nt


def glob_match(pattern: bytes, string: bytes) -> bool:
    """Redis' ``stringmatchlen(pattern, string, nocase=0)``.

    ``*`` ``?`` ``[abc]`` ``[^a]`` ``[a-z]`` and ``\\x`` escapes, with Redis' quirks: an
    unterminated ``[`` class runs to the end of the pattern, ``[z-a]`` is ``[a-z]``, and the
    empty string matches only the empty pattern (``KEYS *`` special-cases ``*`` itself). Range
    bounds compare as unsigned bytes (as on ARM; x86 Redis compares signed ``char``).
    """
    return _match_tokens(_compile_glob(pattern), string)


# ------------------------------------------------------------------------------------------
# Effects and snapshots

_EFFECTS_VERSION: Final = 1
_OP_SET: Final = 1  # key, value, expire_at | none
_OP_DEL: Final = 2  # key
_OP_EXPIRE: Final = 3  # key, expire_at | none
_OP_FLUSH: Final = 4

_SNAPSHOT_V1: Final = 1
"""Entry by entry: key blob, value blob, expiry flag and time. Still restored: in a rolling
upgrade the nodes restarted first join from a primary that has not been upgraded yet."""
_SNAPSHOT_VERSION: Final = 2
"""Columns: u32 count, u32 expiring; count u32 key lengths, count u32 value lengths, the keys,
the values; expiring u32 key positions (ascending), expiring u64 expiry times. struct, join and
slicing do the work in C: 100,000 keys of 100 bytes encode in about 90 ms and restore in about
130 ms on the lab machine, where version 1 took 0.3 s and 0.5 s (a joiner's host stands still
that long)."""
_MAX_OPS: Final = 1 << 24

_Op = tuple[int, bytes, bytes, int | None]


def _put_at(w: Writer, at: int | None) -> None:
    if at is None:
        w.u8(0)
    else:
        w.u8(1).u64(at & _ULONG_MAX)


def _get_at(r: Reader) -> int | None:
    flag = r.u8()
    if flag == 0:
        return None
    if flag != 1:
        raise WireError(RejectReason.MALFORMED, f"bad expiry flag {flag}")
    return _wrap64(r.u64())


def _encode_snapshot(
    keys: list[bytes], values: list[bytes], expiring: list[tuple[int, int]]
) -> bytes:
    """Version 2 of the given entries; ``expiring`` holds (position in ``keys``, time)."""
    n, m = len(keys), len(expiring)
    return b"".join(
        (
            struct.pack(">BII", _SNAPSHOT_VERSION, n, m),
            struct.pack(f">{n}I", *map(len, keys)),
            struct.pack(f">{n}I", *map(len, values)),
            b"".join(keys),
            b"".join(values),
            struct.pack(f">{m}I", *(i for i, _ in expiring)),
            struct.pack(f">{m}Q", *(at & _ULONG_MAX for _, at in expiring)),
        )
    )


_SNAPSHOT_SLICE: Final = 4096
"""Keys sorted, merged or packed per step of :func:`_snapshot_steps`: a step of 4,096 keys
takes about 2 ms on the lab machine, so a primary encoding a joiner's snapshot between its
other work never keeps a client or a heartbeat waiting longer than that."""

_RESTORE_SLICE: Final = 2048
"""Keys decoded and inserted per step of :func:`_decode_snapshot_steps`: about 1 ms on the
lab machine (measured 0.7-1.3 ms; a slice of the encoder's 4,096 took 2-4 ms)."""

SnapshotSteps = Generator[None, None, tuple[bytes, ...]]
"""A snapshot built in steps: each ``next()`` does a bounded slice of the work; the last one
raises ``StopIteration`` carrying the snapshot in parts, to be sent one after the other (their
concatenation is :meth:`KVStore.snapshot`; joining 12 MB into one object alone takes 10 ms)."""


def _merge_steps(
    a: list[bytes], b: list[bytes], out: list[bytes], step: int
) -> Generator[None, None, None]:
    """Merge two sorted lists of distinct keys into ``out``, at most 2 x ``step`` per step.

    Each step takes from both lists everything up to the smaller of their next slices' last
    keys (so at most one slice from each) and lets ``sorted`` merge those two runs in C.
    """
    i = j = 0
    while i < len(a) and j < len(b):
        pivot = min(a[min(i + step, len(a)) - 1], b[min(j + step, len(b)) - 1])
        ai = bisect_right(a, pivot, i)
        bj = bisect_right(b, pivot, j)
        out.extend(sorted(a[i:ai] + b[j:bj]))
        i, j = ai, bj
        yield
    out.extend(a[i:])
    out.extend(b[j:])


def _sorted_steps(
    keys: list[bytes], step: int = _SNAPSHOT_SLICE
) -> Generator[None, None, list[bytes]]:
    """``sorted(keys)`` for distinct keys, in steps (one ``sorted`` of all 100,000 keys holds
    the interpreter for about 50 ms): slices sorted one by one, then merged pairwise."""
    runs: list[list[bytes]] = []
    for start in range(0, len(keys), step):
        runs.append(sorted(keys[start : start + step]))
        yield
    while len(runs) > 1:
        merged: list[list[bytes]] = []
        for k in range(0, len(runs) - 1, 2):
            out: list[bytes] = []
            yield from _merge_steps(runs[k], runs[k + 1], out, step)
            merged.append(out)
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return runs[0] if runs else []


def _snapshot_steps(data: dict[bytes, bytes], expires: dict[bytes, int]) -> SnapshotSteps:
    """:func:`_encode_snapshot` of ``data`` and ``expires`` (not changed meanwhile), in steps.

    The same bytes as the one-call encoder (in parts), built a slice at a time, so a host can
    run it on its event loop between datagrams instead of in a thread: a thread shares the
    interpreter lock, and each of the one-call encoder's C calls (the sort, the packs) held
    it, and the loop with it, for tens of milliseconds.
    """
    keys = yield from _sorted_steps(list(data))
    n, step = len(keys), _SNAPSHOT_SLICE
    klens: list[bytes] = []
    vlens: list[bytes] = []
    kparts: list[bytes] = []
    vparts: list[bytes] = []
    expiring: list[tuple[int, int]] = []
    for start in range(0, n, step):
        chunk = keys[start : start + step]
        vals = [data[k] for k in chunk]
        klens.append(struct.pack(f">{len(chunk)}I", *map(len, chunk)))
        vlens.append(struct.pack(f">{len(chunk)}I", *map(len, vals)))
        kparts.append(b"".join(chunk))
        vparts.append(b"".join(vals))
        if expires:
            expiring.extend((start + i, expires[k]) for i, k in enumerate(chunk) if k in expires)
        yield
    m = len(expiring)
    head = struct.pack(">BII", _SNAPSHOT_VERSION, n, m)
    tail = (
        struct.pack(f">{m}I", *(i for i, _ in expiring)),
        struct.pack(f">{m}Q", *(at & _ULONG_MAX for _, at in expiring)),
    )
    return (head, *klens, *vlens, *kparts, *vparts, *tail)


def _decode_snapshot(data: bytes) -> tuple[dict[bytes, bytes], dict[bytes, int]]:
    """Keys, values and expiry times of a snapshot (either version); canonical or refused."""
    return drain(_decode_snapshot_steps(data))


def _decode_snapshot_steps(data: bytes) -> Steps[tuple[dict[bytes, bytes], dict[bytes, int]]]:
    """:func:`_decode_snapshot` in steps of :data:`_RESTORE_SLICE` keys (about 1 ms each).

    A joiner restoring 100,000 keys in one call stood still for 60-130 ms: no heartbeat, no
    datagram read, a backlog to catch up on afterwards while the primary waited for it.
    """
    data = bytes(data)  # no copy of bytes; the slices below must not see it change
    r = Reader(data)
    version = r.u8()
    if version == _SNAPSHOT_V1:
        return _decode_snapshot_v1(r)
    if version != _SNAPSHOT_VERSION:
        raise WireError(RejectReason.MALFORMED, f"unknown snapshot version {version}")
    n = r.u32()
    m = r.u32()
    if n > r.remaining // 8 or m > n:  # every key takes at least its two lengths
        raise WireError(RejectReason.MALFORMED, f"snapshot counts {n} keys, {m} expiring: absurd")
    klens = struct.unpack(f">{n}I", r.raw(4 * n, "key lengths"))
    yield
    vlens = struct.unpack(f">{n}I", r.raw(4 * n, "value lengths"))
    yield
    koff = r.skip(sum(klens), "keys")  # sliced from the snapshot itself, key by key
    voff = r.skip(sum(vlens), "values")
    positions = struct.unpack(f">{m}I", r.raw(4 * m, "expiring positions"))
    times = struct.unpack(f">{m}Q", r.raw(8 * m, "expiry times"))
    r.finish()
    if any(a >= b for a, b in itertools.pairwise(positions)) or (m and positions[-1] >= n):
        raise WireError(RejectReason.MALFORMED, "snapshot expiry positions are out of order")
    data_out: dict[bytes, bytes] = {}
    last: list[bytes] = []
    for start in range(0, n, _RESTORE_SLICE):
        yield
        end = min(n, start + _RESTORE_SLICE)
        keys = _cut(data, klens[start:end], koff)
        values = _cut(data, vlens[start:end], voff)
        koff += sum(klens[start:end])
        voff += sum(vlens[start:end])
        run = last + keys  # the previous slice's last key: sorted across slices too
        if any(map(operator.ge, run, itertools.islice(run, 1, None))):
            raise WireError(RejectReason.MALFORMED, "snapshot keys are not strictly sorted")
        last = keys[-1:]
        data_out.update(zip(keys, values, strict=True))
    keys_at = list(data_out)  # insertion order is the snapshot's order
    expires = {keys_at[i]: _wrap64(at) for i, at in zip(positions, times, strict=True)}
    return data_out, expires


def _cut(joined: bytes, lengths: tuple[int, ...], start: int = 0) -> list[bytes]:
    """``joined`` from ``start`` cut into pieces of ``lengths``, in C loops."""
    ends = list(itertools.accumulate(lengths, initial=start))
    return list(map(joined.__getitem__, map(slice, ends, ends[1:])))


def _decode_snapshot_v1(r: Reader) -> tuple[dict[bytes, bytes], dict[bytes, int]]:
    count = r.count(r.remaining // 9)  # every entry takes at least 9 bytes
    data: dict[bytes, bytes] = {}
    expires: dict[bytes, int] = {}
    previous: bytes | None = None
    for _ in range(count):
        key = r.blob()
        if previous is not None and key <= previous:
            raise WireError(RejectReason.MALFORMED, "snapshot keys are not strictly sorted")
        previous = key
        data[key] = r.blob()
        at = _get_at(r)
        if at is not None:
            expires[key] = at
    r.finish()
    return data, expires


def _decode_effects(effects: bytes) -> list[_Op]:
    r = Reader(effects)
    version = r.u8()
    if version != _EFFECTS_VERSION:
        raise WireError(RejectReason.MALFORMED, f"unknown effects version {version}")
    ops: list[_Op] = []
    while r.remaining:
        if len(ops) >= _MAX_OPS:
            raise WireError(RejectReason.MALFORMED, "too many effects")
        op = r.u8()
        if op == _OP_SET:
            key = r.blob()
            value = r.blob()
            ops.append((op, key, value, _get_at(r)))
        elif op == _OP_DEL:
            ops.append((op, r.blob(), b"", None))
        elif op == _OP_EXPIRE:
            key = r.blob()
            ops.append((op, key, b"", _get_at(r)))
        elif op == _OP_FLUSH:
            ops.append((op, b"", b"", None))
        else:
            raise WireError(RejectReason.MALFORMED, f"unknown effect op {op}")
    r.finish()
    if not ops:
        raise WireError(RejectReason.MALFORMED, "effects without any operation")
    return ops


# ------------------------------------------------------------------------------------------
# Digest (Redis' DEBUG DIGEST, plus the expiry time)


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _mix(digest: bytes, data: bytes) -> bytes:
    """Redis' ``mixDigest``: xor in SHA1(data), then hash the result (order-sensitive)."""
    return _sha1(_xor(digest, _sha1(data)))


_ZERO_DIGEST: Final = bytes(20)
_EXPIRE_MARK: Final = _sha1(b"!!expire!!")
_DB0: Final = (0).to_bytes(4, "big")
_OBJ_STRING: Final = (0).to_bytes(4, "big")


def _key_digest(key: bytes, value: bytes, at: int | None) -> bytes:
    d = _mix(_ZERO_DIGEST, key)
    d = _mix(d, _OBJ_STRING)
    d = _mix(d, value)
    if at is not None:
        d = _xor(d, _EXPIRE_MARK)
        # Not in Redis, which only notes *that* a key expires: replicas must also agree on when.
        d = _mix(d, at.to_bytes(8, "big", signed=True))
    return d


def _scan_hash(key: bytes) -> int:
    """The SCAN position of a key: a stable 63-bit hash, never 0 (0 means "done")."""
    return (int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1) + 1


# ------------------------------------------------------------------------------------------
# The command table


_Handler = Callable[["KVStore", list[bytes]], RespValue]
_H = TypeVar("_H", bound=_Handler)


@dataclass(frozen=True, slots=True)
class _Command:
    fullname: str
    arity: int  # Redis' convention: n = exactly n arguments (name included), -n = at least n
    handler: _Handler
    write: bool = False
    subcommands: dict[bytes, _Command] | None = None


_COMMANDS: dict[bytes, _Command] = {}


def _command(
    name: str, arity: int, *, write: bool = False, parent: str | None = None
) -> Callable[[_H], _H]:
    """Register a handler under ``name`` (or as subcommand ``parent|name``)."""

    def register(handler: _H) -> _H:
        if parent is None:
            _COMMANDS[name.encode()] = _Command(name, arity, handler, write)
        else:
            subcommands = _COMMANDS[parent.encode()].subcommands
            assert subcommands is not None
            subcommands[name.encode()] = _Command(f"{parent}|{name}", arity, handler, write)
        return handler

    return register


def _container(name: str, arity: int, handler: _Handler) -> None:
    """Register a command with subcommands (``handler`` runs when it is given none)."""
    _COMMANDS[name.encode()] = _Command(name, arity, handler, False, {})


# SET option flags (Redis' OBJ_* flags)
_NX: Final = 1 << 0
_XX: Final = 1 << 1
_GET: Final = 1 << 2
_KEEPTTL: Final = 1 << 3
_PERSIST: Final = 1 << 4
_EX: Final = 1 << 5
_PX: Final = 1 << 6
_EXAT: Final = 1 << 7
_PXAT: Final = 1 << 8
_EXPIRY_FLAGS: Final = _EX | _PX | _EXAT | _PXAT

# EXPIRE option flags
_E_NX: Final = 1
_E_XX: Final = 2
_E_GT: Final = 4
_E_LT: Final = 8

_OPTION_FLAG: Final = {b"ex": _EX, b"px": _PX, b"exat": _EXAT, b"pxat": _PXAT}

_INFO_SECTIONS: Final = ("server", "replication", "keyspace")


# ------------------------------------------------------------------------------------------
# The store


class KVStore:
    """A deterministic Redis-compatible string store (see the module docstring)."""

    def __init__(self, det: Determinism, info: Callable[[], dict[str, str]] | None = None) -> None:
        self._det = det
        self._info = info
        self._data: dict[bytes, bytes] = {}
        self._expires: dict[bytes, int] = {}
        # Derived, never part of the state: a min-heap of (expire_at, key) with stale entries
        # (checked against _expires when popped), and the SCAN order (rebuilt when keys come
        # or go).
        self._heap: list[tuple[int, bytes]] = []
        self._index: list[tuple[int, bytes]] | None = None
        # Per-command context: the clock read (at most once) and the effects recorded so far.
        self._now: int | None = None
        self._fx: Writer | None = None

    # -- the public interface -------------------------------------------------------------

    def execute(self, argv: list[bytes]) -> Outcome:
        """Execute one command. Client input never raises: errors are :class:`Error` replies."""
        reply, effects = self._run(lambda: self._dispatch(argv))
        return Outcome(reply, effects, self.is_write(argv) or bool(effects))

    def apply_effects(self, effects: bytes) -> None:
        """Apply the effects a primary's :meth:`execute` returned, without executing anything.

        Never reads the clock or the random source. The whole update is decoded before any of
        it is applied, so malformed effects (:class:`WireError`) leave the state untouched.
        """
        if not effects:
            return
        for op, key, value, at in _decode_effects(effects):
            if op == _OP_SET:
                self._set(key, value, at)
            elif op == _OP_DEL:
                self._delete(key)
            elif op == _OP_EXPIRE:
                if key in self._data:
                    self._set_expire(key, at)
            else:
                self._flush()

    def expire_due(self, max_keys: int = 20) -> Outcome:
        """Delete up to ``max_keys`` keys whose expiry time has passed (Redis' active expiry).

        Keys are taken in (expiry time, key) order, so replicas that run this at the same point
        of the command order with the same clock value delete the same keys. The reply is the
        number deleted; the effects carry the deletions.
        """
        reply, effects = self._run(lambda: self._expire_due(max_keys))
        return Outcome(reply, effects, bool(effects))

    def snapshot(self) -> bytes:
        """The whole state (keys, values, expiry times), canonical: equal states, equal bytes."""
        keys = sorted(self._data)
        expiring = [(i, self._expires[k]) for i, k in enumerate(keys) if k in self._expires]
        return _encode_snapshot(keys, [self._data[k] for k in keys], expiring)

    def snapshot_steps(self) -> SnapshotSteps:
        """:meth:`snapshot` of the state as it is now, built in bounded steps afterwards.

        Only the dictionaries are copied here (values are immutable bytes: about 5 ms for
        100,000 keys); sorting and encoding them take far longer, and the caller runs the
        steps (see :data:`SnapshotSteps`) between its other work while this store goes on
        changing.
        """
        return _snapshot_steps(dict(self._data), dict(self._expires))

    @classmethod
    def restore(
        cls,
        data: bytes,
        det: Determinism,
        info: Callable[[], dict[str, str]] | None = None,
    ) -> KVStore:
        """Rebuild a store from :meth:`snapshot` bytes; raises :class:`WireError` if malformed."""
        return drain(cls.restore_steps(data, det, info))

    @classmethod
    def restore_steps(
        cls,
        data: bytes,
        det: Determinism,
        info: Callable[[], dict[str, str]] | None = None,
    ) -> Steps[KVStore]:
        """:meth:`restore` in steps of about 1 ms (:data:`_RESTORE_SLICE` keys), for a host
        that keeps serving its peers meanwhile; ``data`` must not change until the last step."""
        store = cls(det, info)
        store._data, store._expires = yield from _decode_snapshot_steps(data)
        store._heap = [(at, key) for key, at in store._expires.items()]
        heapq.heapify(store._heap)
        return store

    def digest(self) -> bytes:
        """A 20-byte digest of the logical state, independent of insertion order.

        Redis' ``DEBUG DIGEST`` algorithm (identical to Redis when no key has an expiry), with
        each key's expiry time mixed in as well.
        """
        if not self._data:
            return _ZERO_DIGEST
        final = _mix(_ZERO_DIGEST, _DB0)
        acc = int.from_bytes(final, "big")
        for key, value in self._data.items():
            # xorDigest(final, digest): the key's digest is hashed once more, then xored in.
            acc ^= int.from_bytes(_sha1(_key_digest(key, value, self._expires.get(key))), "big")
        return acc.to_bytes(20, "big")

    @staticmethod
    def is_write(argv: list[bytes]) -> bool:
        """Whether the command (by name) modifies the data set, for routing reads and writes."""
        if not argv:
            return False
        cmd = _COMMANDS.get(argv[0].lower())
        return cmd is not None and cmd.write

    def _run(self, body: Callable[[], RespValue]) -> tuple[RespValue, bytes]:
        """Run one operation with a fresh clock read and effects log; return reply, effects."""
        self._now = None
        self._fx = Writer().u8(_EFFECTS_VERSION)
        try:
            reply = body()
            effects = self._fx.getvalue()
        finally:
            self._fx = None
            self._now = None
        return reply, (b"" if len(effects) == 1 else effects)

    def _expire_due(self, max_keys: int) -> int:
        deleted = 0
        while deleted < max_keys and self._heap:
            at, key = self._heap[0]
            if self._expires.get(key) != at:
                heapq.heappop(self._heap)  # stale: the expiry was changed or removed since
                continue
            if self._clock() <= at:
                break
            heapq.heappop(self._heap)
            self._delete(key)
            deleted += 1
        return deleted

    # -- state mutations (the only code that changes _data/_expires; each records an effect) ---

    def _set(self, key: bytes, value: bytes, at: int | None) -> None:
        if key not in self._data:
            self._index = None
        self._data[key] = value
        if at is None:
            self._expires.pop(key, None)
        else:
            self._expires[key] = at
            heapq.heappush(self._heap, (at, key))
            self._compact_heap()
        if self._fx is not None:
            self._fx.u8(_OP_SET).blob(key).blob(value)
            _put_at(self._fx, at)

    def _delete(self, key: bytes) -> bool:
        if key not in self._data:
            return False
        del self._data[key]
        self._expires.pop(key, None)
        self._index = None
        if self._fx is not None:
            self._fx.u8(_OP_DEL).blob(key)
        return True

    def _set_expire(self, key: bytes, at: int | None) -> None:
        if at is None:
            self._expires.pop(key, None)
        else:
            self._expires[key] = at
            heapq.heappush(self._heap, (at, key))
            self._compact_heap()
        if self._fx is not None:
            self._fx.u8(_OP_EXPIRE).blob(key)
            _put_at(self._fx, at)

    def _flush(self) -> None:
        self._data.clear()
        self._expires.clear()
        self._heap.clear()
        self._index = None
        if self._fx is not None:
            self._fx.u8(_OP_FLUSH)

    def _compact_heap(self) -> None:
        if len(self._heap) > 2 * len(self._expires) + 64:
            self._heap = [(at, key) for key, at in self._expires.items()]
            heapq.heapify(self._heap)

    # -- reading ---------------------------------------------------------------------------

    def _clock(self) -> int:
        """The command's time: one ``det.now_ms()`` per command, read only when needed."""
        if self._now is None:
            self._now = self._det.now_ms()
        return self._now

    def _lookup(self, key: bytes) -> bytes | None:
        """The value of a live key; an expired key is deleted (an effect) and reads as absent."""
        value = self._data.get(key)
        if value is None:
            return None
        at = self._expires.get(key)
        if at is not None and self._clock() > at:
            self._delete(key)
            return None
        return value

    def _scan_index(self) -> list[tuple[int, bytes]]:
        if self._index is None:
            self._index = sorted((_scan_hash(key), key) for key in self._data)
        return self._index

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, argv: list[bytes]) -> RespValue:
        if not argv:
            return Error("ERR unknown command '', with args beginning with: ")
        cmd = _COMMANDS.get(argv[0].lower())
        if cmd is not None and cmd.subcommands is not None and len(argv) >= 2:
            sub = cmd.subcommands.get(argv[1].lower())
            if sub is None:
                return Error(
                    f"ERR unknown subcommand '{_text(_cstr(argv[1])[:128])}'. "
                    f"Try {_text(argv[0].upper())} HELP."
                )
            cmd = sub
        if cmd is None:
            args = b""
            for arg in argv[1:]:
                if len(args) >= 128:
                    break
                args += b"'" + _cstr(arg)[: 128 - len(args)] + b"' "
            name = _cstr(argv[0])[:128]
            return Error(
                f"ERR unknown command '{_text(name)}', with args beginning with: {_text(args)}"
            )
        if (cmd.arity > 0 and cmd.arity != len(argv)) or len(argv) < -cmd.arity:
            return _arity_error(cmd.fullname)
        return cmd.handler(self, argv)

    # -- option parsing shared by SET and GETEX ---------------------------------------------

    @staticmethod
    def _parse_string_options(
        argv: list[bytes], start: int, is_set: bool
    ) -> tuple[int, bytes | None] | Error:
        """Redis' ``parseExtendedStringArgumentsOrReply``, condition for condition."""
        flags = 0
        expire: bytes | None = None
        j = start
        while j < len(argv):
            opt = _cstr(argv[j]).lower()
            has_next = j != len(argv) - 1
            if opt == b"nx" and not flags & _XX and is_set:
                flags |= _NX
            elif opt == b"xx" and not flags & _NX and is_set:
                flags |= _XX
            elif opt == b"get" and is_set:
                flags |= _GET
            elif opt == b"keepttl" and not flags & (_PERSIST | _EXPIRY_FLAGS) and is_set:
                flags |= _KEEPTTL
            elif opt == b"persist" and not is_set and not flags & (_EXPIRY_FLAGS | _KEEPTTL):
                flags |= _PERSIST
            elif (
                opt in (b"ex", b"px", b"exat", b"pxat")
                and has_next
                and not flags & (_KEEPTTL | _PERSIST)
                and not flags & (_EXPIRY_FLAGS & ~_OPTION_FLAG[opt])
            ):
                flags |= _OPTION_FLAG[opt]
                expire = argv[j + 1]
                j += 1
            else:
                return _SYNTAX
            j += 1
        return flags, expire

    def _expire_ms(self, raw: bytes, flags: int, fullname: str) -> int | Error:
        """Redis' ``getExpireMillisecondsOrReply``: the absolute expiry time in milliseconds."""
        ms = _parse_ll(raw)
        if ms is None:
            return _NOT_INT
        seconds = bool(flags & (_EX | _EXAT))
        if ms <= 0 or (seconds and ms > _LLONG_MAX // 1000):
            return _expire_error(fullname)
        if seconds:
            ms *= 1000
        if flags & (_EX | _PX):
            ms = _wrap64(ms + self._clock())
        if ms <= 0:  # the addition overflowed
            return _expire_error(fullname)
        return ms

    def _set_generic(
        self,
        flags: int,
        key: bytes,
        value: bytes,
        expire: bytes | None,
        fullname: str,
        ok_reply: RespValue = _OK,
        abort_reply: RespValue = None,
    ) -> RespValue:
        """Redis' ``setGenericCommand``."""
        at: int | None = None
        if expire is not None:
            ms = self._expire_ms(expire, flags, fullname)
            if isinstance(ms, Error):
                return ms
            at = ms
        old = self._lookup(key)
        found = old is not None
        if (flags & _NX and found) or (flags & _XX and not found):
            return old if flags & _GET else abort_reply
        if flags & _KEEPTTL and found:
            at = self._expires.get(key)
        self._set(key, value, at)
        return old if flags & _GET else ok_reply

    # -- connection and server commands ---------------------------------------------------

    @_command("ping", -1)
    def _ping(self, argv: list[bytes]) -> RespValue:
        if len(argv) > 2:
            return _arity_error("ping")
        return _PONG if len(argv) == 1 else argv[1]

    @_command("echo", 2)
    def _echo(self, argv: list[bytes]) -> RespValue:
        return argv[1]

    @_command("quit", -1)
    def _quit(self, argv: list[bytes]) -> RespValue:
        return _OK  # closing the connection is the gateway's job

    @_command("select", 2)
    def _select(self, argv: list[bytes]) -> RespValue:
        db = _parse_ll(argv[1])
        if db is None:
            return _NOT_INT
        if not _INT_MIN <= db <= _INT_MAX:
            return Error("ERR value is out of range, value must between -2147483648 and 2147483647")
        return _OK if db == 0 else Error("ERR DB index is out of range")

    @_command("dbsize", 1)
    def _dbsize(self, argv: list[bytes]) -> RespValue:
        return len(self._data)  # like Redis, counts expired keys not yet reclaimed

    @_command("flushall", -1, write=True)
    def _flushall(self, argv: list[bytes]) -> RespValue:
        if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() not in (b"sync", b"async")):
            return _SYNTAX
        if self._data:
            self._flush()
        return _OK

    @_command("flushdb", -1, write=True)
    def _flushdb(self, argv: list[bytes]) -> RespValue:
        return self._flushall(argv)

    @_command("info", -1)
    def _info_cmd(self, argv: list[bytes]) -> RespValue:
        wanted: set[str] = set()
        if len(argv) == 1:
            wanted.update(_INFO_SECTIONS)
        for raw in argv[1:]:
            name = raw.lower()
            if name in (b"all", b"default", b"everything"):
                wanted.update(_INFO_SECTIONS)
            elif name in (b"server", b"replication", b"keyspace"):
                wanted.add(name.decode())
        parts: list[str] = []
        for section in _INFO_SECTIONS:
            if section not in wanted:
                continue
            if section == "server":
                lines = [f"redis_version:{REDIS_VERSION}", "redis_mode:standalone"]
            elif section == "replication":
                fields = self._info() if self._info is not None else {"role": "master"}
                lines = [f"{k}:{v}" for k, v in fields.items()]
            else:
                lines = []
                if self._data:
                    lines.append(
                        f"db0:keys={len(self._data)},expires={len(self._expires)},avg_ttl=0"
                    )
            parts.append("".join(f"{line}\r\n" for line in [f"# {section.title()}", *lines]))
        return "\r\n".join(parts).encode("utf-8", "surrogateescape")

    @_command("debug", -2)
    def _debug(self, argv: list[bytes]) -> RespValue:
        if argv[1].lower() == b"digest" and len(argv) == 2:
            return SimpleString(self.digest().hex())
        return _format_error(
            b"unknown subcommand or wrong number of arguments for '"
            + _cstr(argv[1])[:128]
            + b"'. Try "
            + argv[0].upper()
            + b" HELP."
        )

    # -- keyspace commands -----------------------------------------------------------------

    @_command("del", -2, write=True)
    def _del(self, argv: list[bytes]) -> RespValue:
        deleted = 0
        for key in argv[1:]:
            if self._lookup(key) is not None and self._delete(key):
                deleted += 1
        return deleted

    @_command("unlink", -2, write=True)
    def _unlink(self, argv: list[bytes]) -> RespValue:
        return self._del(argv)

    @_command("exists", -2)
    def _exists(self, argv: list[bytes]) -> RespValue:
        return sum(1 for key in argv[1:] if self._lookup(key) is not None)

    @_command("touch", -2)
    def _touch(self, argv: list[bytes]) -> RespValue:
        return self._exists(argv)

    @_command("type", 2)
    def _type(self, argv: list[bytes]) -> RespValue:
        return SimpleString("none" if self._lookup(argv[1]) is None else "string")

    @_command("keys", 2)
    def _keys(self, argv: list[bytes]) -> RespValue:
        pattern = argv[1]
        allkeys = pattern == b"*"
        tokens = [] if allkeys else _compile_glob(pattern)
        found: list[RespValue] = []
        for key in sorted(self._data):
            if not allkeys and not _match_tokens(tokens, key):
                continue
            at = self._expires.get(key)
            if at is not None and self._clock() > at:
                continue  # like Redis' KEYS: skipped, not deleted
            found.append(key)
        return found

    @_command("scan", -2)
    def _scan(self, argv: list[bytes]) -> RespValue:
        cursor = _parse_cursor(argv[1])
        if cursor is None:
            return Error("ERR invalid cursor")
        count = 10
        tokens: list[_Token] | None = None
        typename: bytes | None = None
        i = 2
        while i < len(argv):
            left = len(argv) - i
            opt = _cstr(argv[i]).lower()
            if opt == b"count" and left >= 2:
                parsed = _parse_ll(argv[i + 1])
                if parsed is None:
                    return _NOT_INT
                if parsed < 1:
                    return _SYNTAX
                count = parsed
            elif opt == b"match" and left >= 2:
                tokens = None if argv[i + 1] == b"*" else _compile_glob(argv[i + 1])
            elif opt == b"type" and left >= 2:
                typename = _cstr(argv[i + 1]).lower()
            else:
                return _SYNTAX
            i += 2
        index = self._scan_index()
        start = bisect_left(index, (cursor, b""))
        end = min(start + count, len(index))
        # Never split keys sharing a hash between two calls: the cursor is a hash value.
        while start < end < len(index) and index[end][0] == index[end - 1][0]:
            end += 1
        next_cursor = index[end][0] if end < len(index) else 0
        keys: list[RespValue] = []
        for _, key in index[start:end]:
            if tokens is not None and not _match_tokens(tokens, key):
                continue
            if self._lookup(key) is None:
                continue
            if typename is not None and typename != b"string":
                continue
            keys.append(key)
        return [str(next_cursor).encode(), keys]

    @_command("randomkey", 1)
    def _randomkey(self, argv: list[bytes]) -> RespValue:
        candidates = list(self._scan_index())  # a deterministic order, unlike dict order
        while candidates:
            i = self._det.random_below(len(candidates))
            key = candidates[i][1]
            if self._lookup(key) is not None:
                return key
            del candidates[i]  # it had expired and is gone: draw again, as Redis does
        return None

    # -- expiry ------------------------------------------------------------------------------

    def _expire_generic(self, argv: list[bytes], relative: bool, seconds: bool) -> RespValue:
        """Redis' ``expireGenericCommand``."""
        fullname = argv[0].lower().decode("ascii")
        flags = 0
        for raw in argv[3:]:
            opt = _cstr(raw).lower()
            if opt == b"nx":
                flags |= _E_NX
            elif opt == b"xx":
                flags |= _E_XX
            elif opt == b"gt":
                flags |= _E_GT
            elif opt == b"lt":
                flags |= _E_LT
            else:
                return _format_error(b"Unsupported option " + _cstr(raw))
        if flags & _E_NX and flags & (_E_XX | _E_GT | _E_LT):
            return Error("ERR NX and XX, GT or LT options at the same time are not compatible")
        if flags & _E_GT and flags & _E_LT:
            return Error("ERR GT and LT options at the same time are not compatible")
        when = _parse_ll(argv[2])
        if when is None:
            return _NOT_INT
        if seconds:
            if when > _LLONG_MAX // 1000 or when < -(_LLONG_MAX // 1000):
                return _expire_error(fullname)
            when *= 1000
        basetime = self._clock() if relative else 0
        if when > _LLONG_MAX - basetime:
            return _expire_error(fullname)
        when += basetime
        key = argv[1]
        if self._lookup(key) is None:
            return 0
        current = self._expires.get(key)
        if flags & _E_NX and current is not None:
            return 0
        if flags & _E_XX and current is None:
            return 0
        if flags & _E_GT and (current is None or when <= current):
            return 0
        if flags & _E_LT and current is not None and when >= current:
            return 0
        if when <= self._clock():
            self._delete(key)
        else:
            self._set_expire(key, when)
        return 1

    @_command("expire", -3, write=True)
    def _expire(self, argv: list[bytes]) -> RespValue:
        return self._expire_generic(argv, relative=True, seconds=True)

    @_command("pexpire", -3, write=True)
    def _pexpire(self, argv: list[bytes]) -> RespValue:
        return self._expire_generic(argv, relative=True, seconds=False)

    @_command("expireat", -3, write=True)
    def _expireat(self, argv: list[bytes]) -> RespValue:
        return self._expire_generic(argv, relative=False, seconds=True)

    @_command("pexpireat", -3, write=True)
    def _pexpireat(self, argv: list[bytes]) -> RespValue:
        return self._expire_generic(argv, relative=False, seconds=False)

    def _ttl_generic(self, key: bytes, ms: bool, absolute: bool) -> RespValue:
        if self._lookup(key) is None:
            return -2
        at = self._expires.get(key)
        if at is None:
            return -1
        ttl = at if absolute else max(at - self._clock(), 0)
        return ttl if ms else _c_div(ttl + 500, 1000)  # rounded, absolute times too

    @_command("ttl", 2)
    def _ttl(self, argv: list[bytes]) -> RespValue:
        return self._ttl_generic(argv[1], ms=False, absolute=False)

    @_command("pttl", 2)
    def _pttl(self, argv: list[bytes]) -> RespValue:
        return self._ttl_generic(argv[1], ms=True, absolute=False)

    @_command("expiretime", 2)
    def _expiretime(self, argv: list[bytes]) -> RespValue:
        return self._ttl_generic(argv[1], ms=False, absolute=True)

    @_command("pexpiretime", 2)
    def _pexpiretime(self, argv: list[bytes]) -> RespValue:
        return self._ttl_generic(argv[1], ms=True, absolute=True)

    @_command("persist", 2, write=True)
    def _persist(self, argv: list[bytes]) -> RespValue:
        key = argv[1]
        if self._lookup(key) is None or key not in self._expires:
            return 0
        self._set_expire(key, None)
        return 1

    # -- strings ---------------------------------------------------------------------------

    @_command("get", 2)
    def _get(self, argv: list[bytes]) -> RespValue:
        return self._lookup(argv[1])

    @_command("set", -3, write=True)
    def _set_cmd(self, argv: list[bytes]) -> RespValue:
        parsed = self._parse_string_options(argv, 3, is_set=True)
        if isinstance(parsed, Error):
            return parsed
        flags, expire = parsed
        return self._set_generic(flags, argv[1], argv[2], expire, "set")

    @_command("setnx", 3, write=True)
    def _setnx(self, argv: list[bytes]) -> RespValue:
        return self._set_generic(_NX, argv[1], argv[2], None, "setnx", 1, 0)

    @_command("setex", 4, write=True)
    def _setex(self, argv: list[bytes]) -> RespValue:
        return self._set_generic(_EX, argv[1], argv[3], argv[2], "setex")

    @_command("psetex", 4, write=True)
    def _psetex(self, argv: list[bytes]) -> RespValue:
        return self._set_generic(_PX, argv[1], argv[3], argv[2], "psetex")

    @_command("getset", 3, write=True)
    def _getset(self, argv: list[bytes]) -> RespValue:
        old = self._lookup(argv[1])
        self._set(argv[1], argv[2], None)
        return old

    @_command("getdel", 2, write=True)
    def _getdel(self, argv: list[bytes]) -> RespValue:
        value = self._lookup(argv[1])
        if value is not None:
            self._delete(argv[1])
        return value

    @_command("getex", -2, write=True)
    def _getex(self, argv: list[bytes]) -> RespValue:
        parsed = self._parse_string_options(argv, 2, is_set=False)
        if isinstance(parsed, Error):
            return parsed
        flags, expire = parsed
        key = argv[1]
        value = self._lookup(key)
        if value is None:
            return None
        if expire is not None:
            at = self._expire_ms(expire, flags, "getex")
            if isinstance(at, Error):
                return at
            if flags & (_EXAT | _PXAT) and at <= self._clock():
                self._delete(key)
            else:
                self._set_expire(key, at)
        elif flags & _PERSIST and key in self._expires:
            self._set_expire(key, None)
        return value

    @_command("mget", -2)
    def _mget(self, argv: list[bytes]) -> RespValue:
        return [self._lookup(key) for key in argv[1:]]

    @_command("mset", -3, write=True)
    def _mset(self, argv: list[bytes]) -> RespValue:
        if len(argv) % 2 == 0:
            return _arity_error("mset")
        for j in range(1, len(argv), 2):
            self._set(argv[j], argv[j + 1], None)
        return _OK

    @_command("msetnx", -3, write=True)
    def _msetnx(self, argv: list[bytes]) -> RespValue:
        if len(argv) % 2 == 0:
            return _arity_error("msetnx")
        for j in range(1, len(argv), 2):
            if self._lookup(argv[j]) is not None:
                return 0
        for j in range(1, len(argv), 2):
            self._set(argv[j], argv[j + 1], None)
        return 1

    def _incr_by(self, key: bytes, incr: int) -> RespValue:
        """Redis' ``incrDecrCommand``: the value keeps its expiry."""
        current = self._lookup(key)
        value = 0
        if current is not None:
            parsed = _parse_ll(current)
            if parsed is None:
                return _NOT_INT
            value = parsed
        if (incr < 0 and value < 0 and incr < _LLONG_MIN - value) or (
            incr > 0 and value > 0 and incr > _LLONG_MAX - value
        ):
            return _OVERFLOW
        value += incr
        self._set(key, str(value).encode(), self._expires.get(key))
        return value

    @_command("incr", 2, write=True)
    def _incr(self, argv: list[bytes]) -> RespValue:
        return self._incr_by(argv[1], 1)

    @_command("decr", 2, write=True)
    def _decr(self, argv: list[bytes]) -> RespValue:
        return self._incr_by(argv[1], -1)

    @_command("incrby", 3, write=True)
    def _incrby(self, argv: list[bytes]) -> RespValue:
        incr = _parse_ll(argv[2])
        return _NOT_INT if incr is None else self._incr_by(argv[1], incr)

    @_command("decrby", 3, write=True)
    def _decrby(self, argv: list[bytes]) -> RespValue:
        incr = _parse_ll(argv[2])
        if incr is None:
            return _NOT_INT
        if incr == _LLONG_MIN:
            return Error("ERR decrement would overflow")
        return self._incr_by(argv[1], -incr)

    @_command("append", 3, write=True)
    def _append(self, argv: list[bytes]) -> RespValue:
        key, suffix = argv[1], argv[2]
        current = self._lookup(key)
        if current is None:
            self._set(key, suffix, None)
            return len(suffix)
        if len(current) + len(suffix) > PROTO_MAX_BULK_LEN:
            return _TOO_BIG
        value = current + suffix
        self._set(key, value, self._expires.get(key))
        return len(value)

    @_command("strlen", 2)
    def _strlen(self, argv: list[bytes]) -> RespValue:
        value = self._lookup(argv[1])
        return 0 if value is None else len(value)


# -- container commands (CLIENT, COMMAND) ----------------------------------------------------


def _client_alone(store: KVStore, argv: list[bytes]) -> RespValue:
    return _arity_error("client")  # not reached: the arity check (-2) answers first


def _command_table(store: KVStore, argv: list[bytes]) -> RespValue:
    return []  # COMMAND alone: Redis lists its command table; an empty one is acceptable


_container("client", -2, _client_alone)
_container("command", -1, _command_table)


@_command("setname", 3, parent="client")
def _client_setname(store: KVStore, argv: list[bytes]) -> RespValue:
    if any(b < 0x21 or b > 0x7E for b in argv[2]):
        return Error("ERR Client names cannot contain spaces, newlines or special characters.")
    return _OK  # names belong to connections: the gateway may keep them; the store does not


@_command("getname", 2, parent="client")
def _client_getname(store: KVStore, argv: list[bytes]) -> RespValue:
    return None


@_command("docs", -2, parent="command")
def _command_docs(store: KVStore, argv: list[bytes]) -> RespValue:
    return []  # no documentation: clients such as redis-cli then just skip their hints


@_command("count", 2, parent="command")
def _command_count(store: KVStore, argv: list[bytes]) -> RespValue:
    return len(_COMMANDS)
