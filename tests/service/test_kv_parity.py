"""Parity with the real thing: KVStore's replies, byte for byte, against a real ``redis-server``.

If ``redis-server`` is on PATH (Debian: ``apt-get install redis-server``), a private instance
is started on a free loopback port (no persistence, in a temporary directory) and every command
below is sent to both; ``encode(store.execute(argv).reply)`` must equal the raw bytes Redis
answered. Without ``redis-server`` the tests are skipped.

The store's clock is the wall clock (as Redis'), so the command lists avoid anything whose reply
depends on the exact millisecond: relative expiry times are only read back in whole seconds,
far from a rounding boundary, and the random mix uses absolute times only.

Known, deliberate differences from Redis 7.0, never compared here, are listed in
:data:`DEVIATIONS`.
"""

from __future__ import annotations

import random
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.service.kv import KVStore
from appliance.service.resp import decode_reply, encode

DEVIATIONS = [
    "Only database 0 exists: SELECT n for n != 0 answers 'ERR DB index is out of range' "
    "(Redis has 16 databases).",
    "KEYS returns keys in sorted order (Redis: hash-table order); the tests compare KEYS as sets.",
    "SCAN's cursor is a position in a stable 63-bit hash order (Redis: a reverse-binary "
    "hash-table cursor); cursor values differ, the guarantees (every key present for the whole "
    "iteration is returned, COUNT is a hint, MATCH filters after COUNT) are the same.",
    "DEBUG DIGEST also mixes in each key's expiry *time* (Redis only notes that a key has an "
    "expiry); with no expiring key the digests are identical. DEBUG has no other subcommand "
    "(DEBUG HELP included), and works without enable-debug-command.",
    "COMMAND and COMMAND DOCS reply with an empty array; COMMAND COUNT counts our commands; "
    "other COMMAND subcommands (INFO, LIST, GETKEYS, HELP) are unknown subcommands.",
    "CLIENT SETNAME validates and answers OK but names are not kept (client state belongs to "
    "the connection, not to the replicated store): CLIENT GETNAME is always nil. Other CLIENT "
    "subcommands are unknown subcommands.",
    "INFO has only the Server (redis_version:7.0.0-appliance, redis_mode), Replication (fields "
    "supplied by the node) and Keyspace sections; avg_ttl is always 0.",
    "QUIT answers OK but the store does not close anything (the connection handler does).",
    "Only the string type exists, and of the string commands GETRANGE, SETRANGE, INCRBYFLOAT, "
    "LCS, SUBSTR and the bit commands are missing (unknown command); so are transactions, "
    "scripting, pub/sub, CONFIG, HELLO, AUTH, OBJECT, RENAME, COPY, MOVE, DUMP/RESTORE, WAIT.",
    "Expired keys are reclaimed lazily (on access) and by KVStore.expire_due() when the node "
    "runs it, not by a background cycle: DBSIZE and INFO keyspace count an expired key until "
    "then (Redis would usually have reclaimed it within a second).",
    "Glob ranges with bytes >= 0x80 ([\\x80-\\xff]) compare unsigned bytes, as Redis does on "
    "ARM; Redis on x86 compares signed chars.",
    "A key's expiry time is read from the clock once per command (like Redis' cached command "
    "time), through the VDF facade rather than the OS clock.",
    "SCAN ... TYPE none never returns keys (Redis can return a key that expired during the scan).",
]

REDIS_SERVER = shutil.which("redis-server")

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not on PATH (apt-get install redis-server): parity tests skipped",
)


# ------------------------------------------------------------------------------------------
# A minimal raw RESP client


def _read_reply(f: BinaryIO) -> bytes:
    """Read one complete reply and return its exact bytes."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"connection closed or bad line from redis: {line!r}")
    kind = line[:1]
    if kind in (b"+", b"-", b":"):
        return line
    if kind == b"$":
        n = int(line[1:-2])
        return line if n < 0 else line + f.read(n + 2)
    if kind == b"*":
        n = int(line[1:-2])
        return line + b"".join(_read_reply(f) for _ in range(max(n, 0)))
    raise ConnectionError(f"unexpected reply type from redis: {line!r}")


class RedisConnection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, argv: list[bytes]) -> bytes:
        request = b"*%d\r\n" % len(argv) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in argv
        )
        self.sock.sendall(request)
        return _read_reply(self.file)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_port(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> int:
    assert REDIS_SERVER is not None
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed by the finalizer
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--enable-debug-command", "local",
            "--daemonize", "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )  # fmt: skip

    def stop() -> None:
        proc.kill()
        proc.wait(timeout=10)
        log.close()

    request.addfinalizer(stop)
    deadline = time.monotonic() + 10.0
    while True:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}: {_log_text(workdir)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not accept connections: {_log_text(workdir)}")
            time.sleep(0.05)
    return port


def _log_text(workdir: Path) -> str:
    return (workdir / "redis.log").read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def redis(redis_port: int) -> Iterator[RedisConnection]:
    conn = RedisConnection(redis_port)
    assert conn.call([b"PING"]) == b"+PONG\r\n"
    yield conn
    conn.close()


class WallClock:
    """The store's VDF facade for parity runs: the same clock Redis reads."""

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def random_below(self, n: int) -> int:
        return self.rng.randrange(n)


# ------------------------------------------------------------------------------------------
# Comparing

_UNORDERED = {b"keys"}


def _normalize(argv: list[bytes], raw: bytes) -> object:
    """Make order-insensitive replies comparable (KEYS, and the key list of a complete SCAN)."""
    name = argv[0].lower() if argv else b""
    if name in _UNORDERED and raw.startswith(b"*"):
        value = decode_reply(raw)
        assert isinstance(value, list)
        return ("unordered", sorted(x for x in value if isinstance(x, bytes)), len(value))
    if name == b"scan" and raw.startswith(b"*2\r\n"):
        value = decode_reply(raw)
        assert isinstance(value, list)
        cursor, keys = value
        assert cursor == b"0", f"parity SCANs must complete in one call: {argv!r}"
        assert isinstance(keys, list)
        return ("scan", sorted(x for x in keys if isinstance(x, bytes)), len(keys))
    return raw


def _run(redis: RedisConnection, store: KVStore, commands: list[list[bytes]]) -> None:
    for i, argv in enumerate(commands):
        expected = redis.call(argv)
        got = encode(store.execute(argv).reply)
        assert _normalize(argv, got) == _normalize(argv, expected), (
            f"command #{i} {argv!r}:\n  redis: {expected!r}\n  store: {got!r}"
        )


def _lines(text: str) -> list[list[bytes]]:
    return [
        [arg.encode() for arg in shlex.split(line)]
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


# ------------------------------------------------------------------------------------------
# The scripted command lines

SCRIPT = _lines(
    r"""
    FLUSHALL
    PING
    ping hello
    PiNg ""
    PING a b
    ECHO hi
    ECHO ""
    ECHO
    ECHO a b
    GET missing
    GET
    GET a b
    SET k v
    GET k
    SET k v2 GET
    SET k v3 NX
    SET k v3 NX GET
    SET k v4 XX
    GET k
    SET new v XX
    SET new v XX GET
    GET new
    set k v nx xx
    SET k v XX NX
    SET k v nx nx
    SET k v xx xx
    SET k v get get
    SET k v foo
    SET k v EX
    SET k v EX 0
    SET k v EX -5
    SET k v EX abc
    SET k v EX 1.5
    SET k v EX " 5"
    SET k v PX 0
    SET k v EXAT 0
    SET k v PXAT -1
    SET k v EX 10 PX 10
    SET k v KEEPTTL EX 10
    SET k v EX 10 KEEPTTL
    SET k v PERSIST
    SET k v EX 9223372036854775
    SET k v EX 9223372036854776
    SET k v PX 9223372036854775807
    SET k v EXAT 9223372036854775
    SET k v EXAT 9223372036854776
    SET k v PXAT 9223372036854775807
    SET k v PXAT 9223372036854775808
    SET k v EX 100 EX 200
    TTL k
    SET k v KEEPTTL
    TTL k
    SET k v2
    TTL k
    SET k v EXAT 99999999999 GET
    EXPIRETIME k
    PEXPIRETIME k
    SET k v PXAT 99999999999999 KEEPTTL
    SET k v keepttl keepttl
    PEXPIRETIME k
    SET "" empty
    GET ""
    SETNX k x
    SETNX fresh x
    SETNX fresh
    GET fresh
    SETEX sx 100 v
    TTL sx
    SETEX sx 0 v
    SETEX sx -1 v
    SETEX sx abc v
    SETEX sx 100
    PSETEX px 100000 v
    TTL px
    PSETEX px 0 v
    GETSET k newval
    GETSET nokey v
    GETSET k
    TTL sx
    GETSET sx v
    TTL sx
    GETDEL k
    GETDEL k
    GETDEL
    GETEX sx
    GETEX sx EX 100
    TTL sx
    GETEX sx PERSIST
    TTL sx
    GETEX sx EX 0
    GETEX nokey EX 0
    GETEX sx EX 10 PERSIST
    GETEX sx NX
    GETEX sx KEEPTTL
    GETEX sx PXAT 99999999999999
    PEXPIRETIME sx
    GETEX sx EXAT 1
    EXISTS sx
    GETEX
    DEL
    DEL a
    MSET a 1 b 2 c 3
    DEL a b nokey
    EXISTS a b c c
    UNLINK c
    EXISTS
    TOUCH a c
    TYPE a
    SET a 1
    TYPE a
    TYPE
    INCR a
    INCR a
    INCRBY a 10
    INCRBY a -100
    DECR a
    DECRBY a 5
    DECRBY a -5
    INCR newcounter
    DECR newcounter2
    INCRBY a abc
    INCRBY a 1.5
    INCRBY a ""
    INCRBY a +1
    INCRBY a 9223372036854775808
    INCRBY a
    INCR a b
    SET big 9223372036854775807
    INCR big
    INCRBY big 0
    DECRBY big -1
    SET small -9223372036854775808
    DECR small
    INCRBY small -1
    DECRBY small 9223372036854775807
    DECRBY small -9223372036854775808
    DECRBY x -9223372036854775808
    SET f 1.5
    INCR f
    SET sp " 1"
    INCR sp
    SET lz 01
    INCR lz
    SET pl +1
    INCR pl
    SET nz -0
    INCR nz
    SET maxlen 12345678901234567890
    INCR maxlen
    APPEND ap hello
    APPEND ap " world"
    GET ap
    STRLEN ap
    STRLEN nokey
    STRLEN
    APPEND ap
    MSET
    MSET a
    MSET a 1 b
    MSET a 1 a 2
    GET a
    MGET a b nokey
    MGET
    MSETNX m1 1 m2 2
    MSETNX m1 1 m3 3
    MSETNX m3
    EXISTS m3
    EXPIRE a 100
    TTL a
    EXPIRE a 100 NX
    EXPIRE a 200 XX
    TTL a
    EXPIRE a 50 GT
    EXPIRE a 500 gt
    TTL a
    EXPIRE a 1000 LT
    EXPIRE a 10 LT
    TTL a
    EXPIRE a 10 NX XX
    EXPIRE a 10 GT LT
    EXPIRE a 10 NX GT
    EXPIRE a 5 XX GT
    EXPIRE a 10 foo
    EXPIRE a 10 NX foo
    EXPIRE a abc
    EXPIRE a abc foo
    EXPIRE a 9223372036854775807
    EXPIRE a -9223372036854775808
    PEXPIRE a 9223372036854775807
    EXPIREAT a 9223372036854775807
    PEXPIREAT a 9223372036854775807
    PEXPIRETIME a
    EXPIRE a
    EXPIRE nokey 10
    PERSIST a
    PERSIST a
    PERSIST nokey
    TTL a
    PTTL a
    PTTL nokey
    TTL nokey
    EXPIRETIME a
    EXPIRE m1 100 GT
    EXPIRE m1 100 LT
    EXPIRE m1 50 GT
    EXPIRE m1 200 GT
    EXPIREAT m2 99999999999
    EXPIRETIME m2
    PEXPIREAT m2 99999999999999
    PEXPIRETIME m2
    EXPIRETIME m2
    EXPIREAT m2 99999999999 GT
    EXPIREAT m2 99999999999 LT
    EXPIREAT m2 1
    EXISTS m2
    PEXPIRE m1 -1
    EXISTS m1
    EXPIRE a 0
    EXISTS a
    PERSIST sx
    PERSIST px
    SET m1 1
    KEYS *
    KEYS a*
    KEYS ?
    KEYS ??
    KEYS [ab]*
    KEYS [^a]*
    KEYS [a-c]*
    KEYS [c-a]*
    KEYS *[
    KEYS [
    KEYS [^
    KEYS *x
    KEYS \*
    KEYS s\x
    KEYS **
    KEYS ""
    KEYS *e*
    KEYS [a-]*
    KEYS [\]]
    KEYS
    SCAN 0 COUNT 1000
    SCAN 0 MATCH a* COUNT 1000
    SCAN 0 MATCH * COUNT 1000
    SCAN 0 match ** count 1000
    SCAN 0 COUNT 1000 TYPE string
    SCAN 0 COUNT 1000 TYPE list
    SCAN abc
    SCAN 0 COUNT 0
    SCAN 0 COUNT -1
    SCAN 0 COUNT abc
    SCAN 0 MATCH
    SCAN 0 FOO bar
    SCAN " 1"
    SCAN 0x1
    SCAN 18446744073709551616
    SCAN
    DBSIZE
    DBSIZE x
    RANDOMKEY x
    DEBUG DIGEST
    SELECT 0
    SELECT 16
    SELECT -1
    SELECT abc
    SELECT 99999999999
    SELECT
    CLIENT SETNAME myname
    CLIENT SETNAME "a b"
    CLIENT SETNAME ""
    CLIENT SETNAME
    CLIENT SETNAME a b
    CLIENT GETNAME x
    CLIENT FOO
    CLIENT
    COMMAND FOO bar
    COMMAND COUNT x
    DEBUG
    DEBUG nosuch
    DEBUG DIGEST x
    INFO nosuchsection
    FOO
    FOO a b
    foo "a b" c
    FLUSHALL x
    FLUSHALL ASYNC
    FLUSHALL SYNC foo
    DEBUG DIGEST
    FLUSHDB
    FLUSHDB async
    FLUSHDB x
    DBSIZE
    RANDOMKEY
    KEYS *
    SCAN 0
    SET only one
    RANDOMKEY
    DBSIZE
    DEBUG DIGEST
    INFO nosuchsection
    """
)

BINARY = [
    [b"SET", b"bin\x00key", b"\xff\xfe\r\n\x00"],
    [b"GET", b"bin\x00key"],
    [b"STRLEN", b"bin\x00key"],
    [b"APPEND", b"bin\x00key", b"\x00"],
    [b"KEYS", b"bin*"],
    [b"KEYS", b"bin?key"],
    [b"KEYS", b"bin\x00*"],
    [b"DEBUG", b"DIGEST"],
    [b"FOO\x00BAR", b"x\x00y"],
    [b"nosuch", b"a" * 200],
    [b"nosuch", *[b"abc"] * 60],
    [b"x" * 200, b"y"],
    [b"nosuch", b"line\r\nbreak"],
    [b"EXPIRE", b"bin\x00key", b"10", b"foo\r\n"],
    [b"EXPIRE", b"bin\x00key", b"10", b"\nfoo"],
    [b"EXPIRE", b"bin\x00key", b"10", b"fo\x00o"],
    [b"EXPIRE", b"bin\x00key", b"10", b"nx\x00junk"],
    [b"DEBUG", b"x\r\n"],
    [b"CLIENT", b"x\r\ny"],
    [b"SET", b"k", b"v", b"nx\x00junk"],
    [b"SET", b"k", b"v", b"EX\x00", b"5"],
    [b"SCAN", b"0\x00junk", b"COUNT", b"1000"],
    [b"SCAN", b""],
    [b"SCAN", b"+0", b"COUNT", b"1000"],
    [b"INCRBY", b"n", b"1\x00"],
    [b"SELECT", b"0\x00"],
    [b"FLUSHALL"],
    # Redis' answer to a cursor it never issued depends on its hash seed: only when empty.
    [b"SCAN", b"-1"],
    [b"SCAN", b"18446744073709551615"],
]


def test_scripted_commands_match_redis(redis: RedisConnection) -> None:
    assert len(SCRIPT) + len(BINARY) >= 150
    _run(redis, KVStore(WallClock()), SCRIPT + BINARY)


def test_digest_matches_redis_without_expiry(redis: RedisConnection) -> None:
    store = KVStore(WallClock())
    commands = [[b"FLUSHALL"]]
    commands += [[b"SET", b"key:%d" % i, b"value %d" % (i * i)] for i in range(50)]
    commands += [[b"INCR", b"counter"], [b"SET", b"", b""], [b"DEBUG", b"DIGEST"]]
    _run(redis, store, commands)
    assert redis.call([b"DEBUG", b"DIGEST"]) == b"+" + store.digest().hex().encode() + b"\r\n"


# ------------------------------------------------------------------------------------------
# A random mix (no command whose reply depends on the exact time)

KEYS = [b"a", b"b", b"c", b"", b"k:1", b"\x00", b"*", b"ab"]
keys = st.sampled_from(KEYS)
values = st.sampled_from(
    [b"", b"0", b"1", b"-1", b"42", b"9223372036854775807", b"-9223372036854775808", b"01",
     b" 1", b"x", b"hello", b"\xff\x00"]
) | st.binary(max_size=6)  # fmt: skip
integers = st.sampled_from(
    [b"0", b"1", b"-1", b"5", b"-7", b"abc", b"", b"1.0", b"9223372036854775807",
     b"-9223372036854775808", b"9223372036854775808"]
)  # fmt: skip
# Absolute expiry times far in the future (years 2286 to 5138) or far in the past.
future_s = st.integers(10**10, 10**11).map(lambda n: str(n).encode())
future_ms = st.integers(10**13, 10**14).map(lambda n: str(n).encode())
past = st.integers(1, 10**6).map(lambda n: str(n).encode())
bad_times = st.sampled_from([b"0", b"-1", b"abc", b"", b"9223372036854775808"])
nonpositive = st.integers(-(10**6), 0).map(lambda n: str(n).encode())
patterns = st.text(alphabet="ab*?[]^-\\k:1", max_size=6).map(str.encode)
flags = st.sampled_from([b"NX", b"XX", b"GT", b"LT"])


@st.composite
def set_command(draw: st.DrawFn) -> list[bytes]:
    argv = [b"SET", draw(keys), draw(values)]
    options: list[list[bytes]] = draw(
        st.lists(
            st.sampled_from([[b"NX"], [b"XX"], [b"GET"], [b"KEEPTTL"], [b"PERSIST"]])
            | st.tuples(st.sampled_from([b"EXAT", b"exat"]), future_s | bad_times).map(list)
            | st.tuples(st.sampled_from([b"PXAT", b"pXaT"]), future_ms | bad_times).map(list)
            | st.tuples(st.sampled_from([b"EX", b"px"]), bad_times).map(list),
            max_size=3,
        )
    )
    return argv + [arg for option in options for arg in option]


@st.composite
def getex_command(draw: st.DrawFn) -> list[bytes]:
    option = draw(
        st.sampled_from([[], [b"PERSIST"], [b"NX"]])
        | st.tuples(st.just(b"EXAT"), future_s | past | bad_times).map(list)
        | st.tuples(st.just(b"PXAT"), future_ms | past | bad_times).map(list)
        | st.tuples(st.sampled_from([b"EX", b"PX"]), bad_times).map(list)
    )
    return [b"GETEX", draw(keys), *option]


@st.composite
def expire_command(draw: st.DrawFn) -> list[bytes]:
    name, when = draw(
        st.tuples(st.just(b"EXPIREAT"), future_s | past | bad_times)
        | st.tuples(st.just(b"PEXPIREAT"), future_ms | past | bad_times)
        | st.tuples(st.sampled_from([b"EXPIRE", b"PEXPIRE"]), nonpositive | bad_times)
    )
    return [name, draw(keys), when, *draw(st.lists(flags, max_size=2))]


commands = st.one_of(
    set_command(),
    getex_command(),
    expire_command(),
    st.tuples(st.sampled_from([b"GET", b"GETDEL", b"TYPE", b"STRLEN", b"INCR", b"DECR"]), keys),
    st.tuples(st.sampled_from([b"EXPIRETIME", b"PEXPIRETIME", b"PERSIST"]), keys),
    st.tuples(st.sampled_from([b"SETNX", b"GETSET", b"APPEND"]), keys, values),
    st.tuples(st.sampled_from([b"INCRBY", b"DECRBY"]), keys, integers),
    st.lists(keys, min_size=1, max_size=3).map(lambda ks: [b"DEL", *ks]),
    st.lists(keys, min_size=1, max_size=3).map(lambda ks: [b"EXISTS", *ks]),
    st.lists(keys, min_size=1, max_size=3).map(lambda ks: [b"MGET", *ks]),
    st.lists(keys | values, min_size=1, max_size=5).map(lambda xs: [b"MSET", *xs]),
    st.lists(keys | values, min_size=1, max_size=5).map(lambda xs: [b"MSETNX", *xs]),
    patterns.map(lambda p: [b"KEYS", p]),
    patterns.map(lambda p: [b"SCAN", b"0", b"MATCH", p, b"COUNT", b"1000"]),
    st.just([b"DBSIZE"]),
).map(list)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(commands, max_size=40))
def test_random_mix_matches_redis(redis: RedisConnection, mix: list[list[bytes]]) -> None:
    store = KVStore(WallClock())
    _run(redis, store, [[b"FLUSHALL"], *mix])
    # Finally the whole data set: drop the expiry times (the one thing our digest adds) and
    # compare DEBUG DIGEST.
    remaining = decode_reply(redis.call([b"KEYS", b"*"]))
    assert isinstance(remaining, list)
    _run(redis, store, [[b"PERSIST", key] for key in remaining if isinstance(key, bytes)])
    _run(redis, store, [[b"DEBUG", b"DIGEST"], [b"DBSIZE"]])
