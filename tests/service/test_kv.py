"""Unit and property tests of the sample key-value service (appliance.service.kv)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.wire.errors import WireError
from appliance.protocols.wire.fields import Writer
from appliance.service import kv
from appliance.service.kv import KVStore, Outcome, glob_match
from appliance.service.resp import Error, RespValue, SimpleString, encode
from tests.steps import run_steps

OK = SimpleString("OK")
T0 = 1_700_000_000_000  # a plausible wall clock, in milliseconds


class FakeDeterminism:
    """A settable clock and a seeded random source; counts how often each is consulted."""

    def __init__(self, now: int = T0, seed: int = 1) -> None:
        self.now = now
        self.rng = random.Random(seed)
        self.clock_reads = 0
        self.random_draws = 0

    def now_ms(self) -> int:
        self.clock_reads += 1
        return self.now

    def random_below(self, n: int) -> int:
        self.random_draws += 1
        return self.rng.randrange(n)


class NoDeterminism:
    """For stores that must never consult the facade (semi-passive backups)."""

    def now_ms(self) -> int:
        raise AssertionError("apply_effects read the clock")

    def random_below(self, n: int) -> int:
        raise AssertionError("apply_effects drew a random number")


def args(*parts: str | bytes | int) -> list[bytes]:
    return [p if isinstance(p, bytes) else str(p).encode() for p in parts]


class Harness:
    def __init__(self, now: int = T0, info: dict[str, str] | None = None) -> None:
        self.det = FakeDeterminism(now)
        self.store = KVStore(self.det, (lambda: info) if info is not None else None)

    def out(self, *parts: str | bytes | int) -> Outcome:
        return self.store.execute(args(*parts))

    def __call__(self, *parts: str | bytes | int) -> RespValue:
        return self.out(*parts).reply

    def advance(self, ms: int) -> None:
        self.det.now += ms


@pytest.fixture
def h() -> Harness:
    return Harness()


def err(message: str) -> Error:
    return Error(message)


# ------------------------------------------------------------------------------------------
# Connection, server and dispatch


def test_ping_echo_quit(h: Harness) -> None:
    assert h("PING") == SimpleString("PONG")
    assert h("ping", "hello") == b"hello"
    assert h("PING", "a", "b") == err("ERR wrong number of arguments for 'ping' command")
    assert h("ECHO", b"\x00\xff") == b"\x00\xff"
    assert h("ECHO") == err("ERR wrong number of arguments for 'echo' command")
    assert h("QUIT") == OK


def test_unknown_command_uses_redis7_wording(h: Harness) -> None:
    assert h("foo", "a", "b") == err(
        "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
    )
    assert h("FOO") == err("ERR unknown command 'FOO', with args beginning with: ")
    long = h("nosuch", "x" * 300)
    assert isinstance(long, Error)
    assert long.message.endswith("'" + "x" * 128 + "' ")
    # Non-UTF-8 bytes are echoed back unchanged on the wire.
    assert encode(h(b"\xff")) == b"-ERR unknown command '\xff', with args beginning with: \r\n"
    assert h.store.execute([]) == Outcome(
        Error("ERR unknown command '', with args beginning with: "), b"", False
    )


def test_wrong_arity_and_case_insensitive_names(h: Harness) -> None:
    assert h("get") == err("ERR wrong number of arguments for 'get' command")
    assert h("GET", "a", "b") == err("ERR wrong number of arguments for 'get' command")
    assert h("sEt", "k", "v") == OK
    assert h("gEt", "k") == b"v"


def test_select_command_client_debug(h: Harness) -> None:
    assert h("SELECT", 0) == OK
    assert h("SELECT", 1) == err("ERR DB index is out of range")
    assert h("SELECT", -1) == err("ERR DB index is out of range")
    assert h("SELECT", "x") == err("ERR value is not an integer or out of range")
    assert h("SELECT", 2**40) == err(
        "ERR value is out of range, value must between -2147483648 and 2147483647"
    )
    assert h("COMMAND") == []
    assert h("COMMAND", "DOCS") == []
    assert h("command", "docs", "get", "set") == []
    count = h("COMMAND", "COUNT")
    assert isinstance(count, int) and count > 30
    assert h("COMMAND", "FOO") == err("ERR unknown subcommand 'FOO'. Try COMMAND HELP.")
    assert h("CLIENT", "SETNAME", "me") == OK
    assert h("CLIENT", "GETNAME") is None
    assert h("CLIENT", "SETNAME", "a b") == err(
        "ERR Client names cannot contain spaces, newlines or special characters."
    )
    assert h("CLIENT", "SETNAME") == err(
        "ERR wrong number of arguments for 'client|setname' command"
    )
    assert h("CLIENT") == err("ERR wrong number of arguments for 'client' command")
    assert h("client", "kill") == err("ERR unknown subcommand 'kill'. Try CLIENT HELP.")
    assert h("DEBUG", "DIGEST") == SimpleString("0" * 40)
    assert h("DEBUG", "SLEEP", "1") == err(
        "ERR unknown subcommand or wrong number of arguments for 'SLEEP'. Try DEBUG HELP."
    )


def test_info_sections(h: Harness) -> None:
    info = h("INFO")
    assert isinstance(info, bytes)
    assert info.startswith(b"# Server\r\nredis_version:7.0.0-appliance\r\n")
    assert b"# Replication\r\nrole:master\r\n" in info
    assert info.endswith(b"# Keyspace\r\n")  # like Redis: no db0 line while empty
    h("SET", "a", 1)
    h("SET", "b", 2, "EX", 10)
    assert h("INFO", "keyspace") == b"# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n"
    assert h("INFO", "nosuchsection") == b""
    assert h("info", "KEYSPACE", "server") == h("INFO", "server") + b"\r\n" + h("INFO", "keyspace")
    node = Harness(info={"role": "slave", "view": "7", "rank": "2"})
    assert node("INFO", "replication") == b"# Replication\r\nrole:slave\r\nview:7\r\nrank:2\r\n"
    assert node("INFO", "all") == node("INFO", "default") == node("INFO")


def test_flushall_flushdb(h: Harness) -> None:
    h("MSET", "a", 1, "b", 2)
    out = h.out("FLUSHALL")
    assert out.reply == OK and out.effects and out.write
    assert h("DBSIZE") == 0
    assert h.out("FLUSHDB", "ASYNC") == Outcome(OK, b"", True)  # nothing to flush
    assert h("FLUSHALL", "SYNC") == OK
    assert h("FLUSHALL", "LATER") == err("ERR syntax error")
    assert h("FLUSHDB", "SYNC", "x") == err("ERR syntax error")


# ------------------------------------------------------------------------------------------
# Strings


def test_get_set_basic_and_binary_safe(h: Harness) -> None:
    assert h("GET", "nokey") is None
    assert h("SET", b"k\x00\r\n", b"\xff\x00v") == OK
    assert h("GET", b"k\x00\r\n") == b"\xff\x00v"
    assert h("SET", "", "") == OK
    assert h("GET", "") == b""
    assert h("STRLEN", b"k\x00\r\n") == 3


def test_set_nx_xx_get_combinations(h: Harness) -> None:
    assert h("SET", "k", "v1", "XX") is None
    assert h("GET", "k") is None
    assert h("SET", "k", "v1", "XX", "GET") is None
    assert h("SET", "k", "v1", "NX") == OK
    assert h("SET", "k", "v2", "NX") is None
    assert h("SET", "k", "v2", "NX", "GET") == b"v1"  # aborted, old value returned
    assert h("GET", "k") == b"v1"
    assert h("SET", "k", "v3", "XX", "GET") == b"v1"
    assert h("SET", "k", "v4", "GET") == b"v3"
    assert h("SET", "new", "x", "GET") is None
    assert h("SET", "new", "x", "NX", "GET") == b"x"
    assert h("SET", "k", "v", "NX", "XX") == err("ERR syntax error")
    assert h("SET", "k", "v", "XX", "NX") == err("ERR syntax error")
    assert h("SET", "k", "v", "nx", "nx") is None  # repeating NX is allowed
    assert h("SET", "k", "v", "BOGUS") == err("ERR syntax error")
    assert h("SET", "k") == err("ERR wrong number of arguments for 'set' command")


def test_set_expiry_options(h: Harness) -> None:
    assert h("SET", "k", "v", "EX", 10) == OK
    assert h("PTTL", "k") == 10_000
    assert h("SET", "k", "v", "PX", 1500) == OK
    assert h("PTTL", "k") == 1500
    assert h("SET", "k", "v", "EXAT", T0 // 1000 + 20) == OK
    assert h("PEXPIRETIME", "k") == (T0 // 1000 + 20) * 1000
    assert h("SET", "k", "v", "PXAT", T0 + 7) == OK
    assert h("PTTL", "k") == 7
    assert h("SET", "k", "v", "EX", 10, "EX", 20) == OK  # the last one wins, as in Redis
    assert h("TTL", "k") == 20
    assert h("SET", "k", "v") == OK  # a plain SET clears the expiry
    assert h("TTL", "k") == -1


@pytest.mark.parametrize(
    ("option", "value"),
    [("EX", 0), ("EX", -1), ("PX", 0), ("EXAT", 0), ("PXAT", -5), ("EX", 9223372036854775)],
)
def test_set_invalid_expire_time(h: Harness, option: str, value: int) -> None:
    assert h("SET", "k", "v", option, value) == err("ERR invalid expire time in 'set' command")
    assert h("EXISTS", "k") == 0


def test_set_expiry_option_errors(h: Harness) -> None:
    assert h("SET", "k", "v", "EX", "ten") == err("ERR value is not an integer or out of range")
    assert h("SET", "k", "v", "EX", "1.5") == err("ERR value is not an integer or out of range")
    assert h("SET", "k", "v", "EX") == err("ERR syntax error")
    assert h("SET", "k", "v", "EX", 1, "PX", 1) == err("ERR syntax error")
    assert h("SET", "k", "v", "KEEPTTL", "EX", 1) == err("ERR syntax error")
    assert h("SET", "k", "v", "PXAT", 1, "KEEPTTL") == err("ERR syntax error")
    assert h("SET", "k", "v", "PERSIST") == err("ERR syntax error")  # a GETEX option only
    assert h("SETEX", "k", 0, "v") == err("ERR invalid expire time in 'setex' command")
    assert h("PSETEX", "k", -1, "v") == err("ERR invalid expire time in 'psetex' command")


def test_set_keepttl(h: Harness) -> None:
    h("SET", "k", "v", "PX", 5000)
    h.advance(1000)
    assert h("SET", "k", "v2", "KEEPTTL") == OK
    assert h("PTTL", "k") == 4000
    assert h("GET", "k") == b"v2"
    assert h("SET", "fresh", "v", "KEEPTTL") == OK  # no expiry to keep
    assert h("TTL", "fresh") == -1


def test_setnx_setex_psetex_getset_getdel(h: Harness) -> None:
    assert h("SETNX", "k", "a") == 1
    assert h("SETNX", "k", "b") == 0
    assert h("SETEX", "k", 100, "c") == OK
    assert h("TTL", "k") == 100
    assert h("GETSET", "k", "d") == b"c"
    assert h("TTL", "k") == -1  # GETSET clears the expiry
    assert h("GETSET", "other", "x") is None
    assert h("PSETEX", "p", 250, "v") == OK
    assert h("PTTL", "p") == 250
    assert h("GETDEL", "k") == b"d"
    assert h("GETDEL", "k") is None
    assert h("EXISTS", "k") == 0


def test_getex(h: Harness) -> None:
    assert h("GETEX", "nokey", "EX", 0) is None  # a missing key is not validated
    h("SET", "k", "v")
    assert h("GETEX", "k") == b"v"
    assert h("GETEX", "k", "EX", 100) == b"v"
    assert h("TTL", "k") == 100
    assert h("GETEX", "k", "PERSIST") == b"v"
    assert h("TTL", "k") == -1
    assert h("GETEX", "k", "PX", 0) == err("ERR invalid expire time in 'getex' command")
    assert h("GETEX", "k", "EX", 1, "PERSIST") == err("ERR syntax error")
    assert h("GETEX", "k", "NX") == err("ERR syntax error")
    assert h("GETEX", "k", "PXAT", T0 + 50) == b"v"
    assert h("PTTL", "k") == 50
    out = h.out("GETEX", "k", "PXAT", T0)  # already due: returned, then deleted
    assert out.reply == b"v" and out.effects
    assert h("EXISTS", "k") == 0


def test_del_exists_unlink_touch_type(h: Harness) -> None:
    h("MSET", "a", 1, "b", 2, "c", 3)
    assert h("EXISTS", "a", "a", "nokey", "b") == 3
    assert h("DEL", "a", "nokey", "a") == 1
    assert h("UNLINK", "b") == 1
    assert h("TOUCH", "b", "c", "c") == 2
    assert h("TYPE", "c") == SimpleString("string")
    assert h("TYPE", "b") == SimpleString("none")
    assert h("DEL") == err("ERR wrong number of arguments for 'del' command")


def test_incr_family(h: Harness) -> None:
    assert h("INCR", "n") == 1
    assert h("INCRBY", "n", 41) == 42
    assert h("DECR", "n") == 41
    assert h("DECRBY", "n", 50) == -9
    assert h("GET", "n") == b"-9"
    assert h("INCRBY", "n", "abc") == err("ERR value is not an integer or out of range")
    assert h("INCRBY", "n", "+1") == err("ERR value is not an integer or out of range")
    assert h("INCRBY", "n", 2**63) == err("ERR value is not an integer or out of range")
    for bad in ("1.5", " 1", "01", "-0", "", "abc", "12345678901234567890"):
        h("SET", "s", bad)
        assert h("INCR", "s") == err("ERR value is not an integer or out of range"), bad
    h("SET", "max", 2**63 - 1)
    assert h("INCR", "max") == err("ERR increment or decrement would overflow")
    assert h("DECRBY", "max", -1) == err("ERR increment or decrement would overflow")
    h("SET", "min", -(2**63))
    assert h("DECR", "min") == err("ERR increment or decrement would overflow")
    assert h("INCRBY", "min", -1) == err("ERR increment or decrement would overflow")
    assert h("DECRBY", "x", -(2**63)) == err("ERR decrement would overflow")
    assert h("INCRBY", "min", 2**63 - 1) == -1


def test_incr_and_append_keep_the_expiry(h: Harness) -> None:
    h("SET", "n", 1, "PX", 1000)
    h("INCR", "n")
    h("APPEND", "n", "0")
    assert h("GET", "n") == b"20"
    assert h("PTTL", "n") == 1000


def test_append_strlen_and_size_limit(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    assert h("APPEND", "k", "hello") == 5
    assert h("APPEND", "k", " world") == 11
    assert h("GET", "k") == b"hello world"
    assert h("STRLEN", "k") == 11
    assert h("STRLEN", "nokey") == 0
    monkeypatch.setattr(kv, "PROTO_MAX_BULK_LEN", 12)
    assert h("APPEND", "k", "!") == 12
    assert h("APPEND", "k", "!") == err(
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    )
    assert h("GET", "k") == b"hello world!"


def test_append_limit_is_512_mib() -> None:
    assert kv.PROTO_MAX_BULK_LEN == 512 * 1024 * 1024


def test_mget_mset_msetnx(h: Harness) -> None:
    assert h("MSET", "a", 1, "b", 2, "a", 3) == OK
    assert h("MGET", "a", "b", "nokey") == [b"3", b"2", None]
    assert h("MSET", "a", 1, "b") == err("ERR wrong number of arguments for 'mset' command")
    assert h("MSET", "a") == err("ERR wrong number of arguments for 'mset' command")
    assert h("MSETNX", "c", 1, "d", 2) == 1
    assert h("MSETNX", "d", 9, "e", 9) == 0
    assert h("EXISTS", "e") == 0
    assert h("MSETNX", "x") == err("ERR wrong number of arguments for 'msetnx' command")
    h("SET", "t", "v", "EX", 10)
    h("MSET", "t", "w")
    assert h("TTL", "t") == -1  # MSET clears expiries


# ------------------------------------------------------------------------------------------
# Expiry and TTL semantics


def test_expiry_exactly_at_the_boundary(h: Harness) -> None:
    h("SET", "k", "v", "PX", 100)  # due at T0 + 100
    h.advance(100)
    assert h("PTTL", "k") == 0
    assert h("TTL", "k") == 0
    out = h.out("GET", "k")
    assert out == Outcome(b"v", b"", False)  # alive while now <= expiry time
    h.advance(1)
    out = h.out("GET", "k")
    assert out.reply is None
    assert out.effects  # the lazy deletion is an effect
    assert out.write  # ... so the read did modify state
    assert h("DBSIZE") == 0
    assert h("PTTL", "k") == -2


def test_ttl_rounds_to_the_nearest_second(h: Harness) -> None:
    h("SET", "a", "v", "PX", 1499)
    h("SET", "b", "v", "PX", 1500)
    assert h("TTL", "a") == 1
    assert h("TTL", "b") == 2
    assert h("TTL", "nokey") == -2
    h("SET", "c", "v")
    assert h("TTL", "c") == -1
    assert h("PTTL", "c") == -1


def test_expire_options(h: Harness) -> None:
    assert h("EXPIRE", "nokey", 10) == 0
    h("SET", "k", "v")
    assert h("EXPIRE", "k", 100, "XX") == 0  # no expiry yet
    assert h("EXPIRE", "k", 100, "GT") == 0  # no expiry counts as infinite
    assert h("EXPIRE", "k", 100, "LT") == 1
    assert h("EXPIRE", "k", 50, "NX") == 0
    assert h("EXPIRE", "k", 200, "XX") == 1
    assert h("EXPIRE", "k", 150, "GT") == 0
    assert h("EXPIRE", "k", 300, "gt") == 1
    assert h("EXPIRE", "k", 300, "LT") == 0
    assert h("PEXPIRE", "k", 299_999, "LT") == 1
    assert h("PTTL", "k") == 299_999
    assert h("EXPIRE", "k", 10, "NX", "XX") == err(
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    )
    assert h("EXPIRE", "k", 10, "GT", "LT") == err(
        "ERR GT and LT options at the same time are not compatible"
    )
    assert h("EXPIRE", "k", 10, "sometimes") == err("ERR Unsupported option sometimes")
    assert h("EXPIRE", "k", "soon") == err("ERR value is not an integer or out of range")
    assert h("EXPIRE", "k", 2**62) == err("ERR invalid expire time in 'expire' command")
    assert h("PEXPIRE", "k", 2**63 - 1) == err("ERR invalid expire time in 'pexpire' command")


def test_expire_in_the_past_deletes(h: Harness) -> None:
    h("MSET", "a", 1, "b", 2, "c", 3)
    out = h.out("EXPIRE", "a", -1)
    assert out.reply == 1 and out.effects
    assert h("PEXPIRE", "b", 0) == 1  # due now counts as expired for EXPIRE
    assert h("EXPIREAT", "c", 1) == 1
    assert h("DBSIZE") == 0


def test_expireat_expiretime_persist(h: Harness) -> None:
    h("SET", "k", "v")
    assert h("EXPIRETIME", "k") == -1
    assert h("EXPIRETIME", "nokey") == -2
    assert h("EXPIREAT", "k", 4_000_000_000) == 1
    assert h("EXPIRETIME", "k") == 4_000_000_000
    assert h("PEXPIREAT", "k", 4_000_000_000_499) == 1
    assert h("PEXPIRETIME", "k") == 4_000_000_000_499
    assert h("EXPIRETIME", "k") == 4_000_000_000  # rounded like TTL, as Redis does
    assert h("PERSIST", "k") == 1
    assert h("PERSIST", "k") == 0
    assert h("PERSIST", "nokey") == 0
    assert h("TTL", "k") == -1


def test_keys_skips_expired_keys_without_deleting(h: Harness) -> None:
    h("SET", "a", 1, "PX", 10)
    h("SET", "b", 2)
    h.advance(11)
    out = h.out("KEYS", "*")
    assert out == Outcome([b"b"], b"", False)
    assert h("DBSIZE") == 2  # like Redis: counted until reclaimed
    assert h("GET", "a") is None
    assert h("DBSIZE") == 1


def test_expire_due_reclaims_in_order_and_replicates(h: Harness) -> None:
    backup = KVStore(NoDeterminism())
    for i in range(5):
        backup.apply_effects(h.out("SET", f"k{i}", "v", "PX", 10 * (5 - i)).effects)
    backup.apply_effects(h.out("SET", "forever", "v").effects)
    h.advance(25)  # k4 (due at +10) and k3 (due at +20) are past; k2 is due at +30
    out = h.store.expire_due(max_keys=1)
    assert out.reply == 1 and out.write
    backup.apply_effects(out.effects)
    assert backup.digest() == h.store.digest()
    assert h("KEYS", "*") == [b"forever", b"k0", b"k1", b"k2"]  # k3 is past but not reclaimed
    assert h("DBSIZE") == 5
    out = h.store.expire_due()
    assert out.reply == 1
    backup.apply_effects(out.effects)
    assert h.store.expire_due() == Outcome(0, b"", False)
    assert h("DBSIZE") == 4
    assert backup.digest() == h.store.digest()
    assert backup.snapshot() == h.store.snapshot()


# ------------------------------------------------------------------------------------------
# KEYS patterns, SCAN, RANDOMKEY, DBSIZE


@pytest.mark.parametrize(
    ("pattern", "string", "expected"),
    [
        (b"*", b"anything", True),
        (b"*", b"", False),  # only KEYS/SCAN special-case a lone "*"
        (b"", b"", True),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),  # reversed ranges are swapped
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"[\\]]", b"]", True),
        (b"a[", b"ab", False),  # unterminated class runs to the end of the pattern
        (b"a[^", b"ab", True),
        # "a-]" is the range ]..a, so the (unterminated) class goes on to take in the "x":
        (b"[a-]x", b"]", True),
        (b"[a-]x", b"x", True),
        (b"[a-]x", b"]x", False),
        (b"*a*b*", b"xxaxxbxx", True),
        (b"*a*b", b"xxaxxbxxc", False),
        (b"a\\", b"a\\", True),  # a trailing backslash is literal
    ],
)
def test_glob_match(pattern: bytes, string: bytes, expected: bool) -> None:
    assert glob_match(pattern, string) is expected


def test_glob_match_is_not_recursive() -> None:
    assert glob_match(b"*a" * 5000 + b"b", b"a" * 6000) is False
    assert glob_match(b"*a" * 5000, b"a" * 6000) is True


def test_keys(h: Harness) -> None:
    h("MSET", "hello", 1, "hallo", 2, "hxllo", 3, "", 4, "foo", 5)
    assert h("KEYS", "*") == [b"", b"foo", b"hallo", b"hello", b"hxllo"]  # sorted
    assert h("KEYS", "h[ae]llo") == [b"hallo", b"hello"]
    assert h("KEYS", "**") == [b"foo", b"hallo", b"hello", b"hxllo"]  # "" needs exactly "*"
    assert h("KEYS", "f?o") == [b"foo"]
    assert h("KEYS") == err("ERR wrong number of arguments for 'keys' command")


def test_scan_visits_every_key_exactly_once(h: Harness) -> None:
    for i in range(100):
        h("SET", f"key:{i}", i)
    seen: list[bytes] = []
    cursor = b"0"
    calls = 0
    while True:
        reply = h("SCAN", cursor, "COUNT", 7)
        assert isinstance(reply, list)
        cursor, batch = reply[0], reply[1]
        assert isinstance(cursor, bytes) and isinstance(batch, list)
        seen += [k for k in batch if isinstance(k, bytes)]
        calls += 1
        if cursor == b"0":
            break
    assert sorted(seen) == sorted(f"key:{i}".encode() for i in range(100))
    assert calls == 15  # COUNT keys per call (no two of these keys share a hash)


def test_scan_is_stable_under_concurrent_changes(h: Harness) -> None:
    for i in range(60):
        h("SET", f"stay:{i}", i)
    seen: set[bytes] = set()
    cursor = b"0"
    step = 0
    while True:
        reply = h("SCAN", cursor, "COUNT", 5)
        assert isinstance(reply, list)
        cursor, batch = reply[0], reply[1]
        assert isinstance(cursor, bytes) and isinstance(batch, list)
        seen.update(k for k in batch if isinstance(k, bytes))
        h("SET", f"new:{step}", step)
        h("DEL", f"new:{step - 3}")
        step += 1
        if cursor == b"0":
            break
    assert {f"stay:{i}".encode() for i in range(60)} <= seen


def test_scan_options_and_errors(h: Harness) -> None:
    h("MSET", "a1", 1, "a2", 2, "b1", 3)
    reply = h("SCAN", 0, "MATCH", "a*", "COUNT", 100)
    assert isinstance(reply, list) and reply[0] == b"0"
    assert reply[1] in ([b"a1", b"a2"], [b"a2", b"a1"])
    typed = h("SCAN", 0, "TYPE", "STRING", "COUNT", 100)
    assert isinstance(typed, list) and len(typed[1]) == 3  # type: ignore[arg-type]
    assert h("SCAN", 0, "TYPE", "list") == [b"0", []]
    assert h("SCAN", "abc") == err("ERR invalid cursor")
    assert h("SCAN", " 0") == err("ERR invalid cursor")
    assert h("SCAN", 2**64) == err("ERR invalid cursor")
    assert h("SCAN", 2**64 - 1) == [b"0", []]
    assert h("SCAN", 0, "COUNT", 0) == err("ERR syntax error")
    assert h("SCAN", 0, "COUNT", "x") == err("ERR value is not an integer or out of range")
    assert h("SCAN", 0, "MATCH") == err("ERR syntax error")
    assert h("SCAN") == err("ERR wrong number of arguments for 'scan' command")


def test_scan_deletes_expired_keys_lazily(h: Harness) -> None:
    h("SET", "a", 1, "PX", 5)
    h("SET", "b", 2)
    h.advance(6)
    out = h.out("SCAN", 0)
    assert out.reply == [b"0", [b"b"]]
    assert out.effects
    assert h("DBSIZE") == 1


def test_randomkey_dbsize(h: Harness) -> None:
    assert h("RANDOMKEY") is None
    assert h("DBSIZE") == 0
    h("MSET", "a", 1, "b", 2, "c", 3)
    assert h("DBSIZE") == 3
    draws = h.det.random_draws
    picks = {h("RANDOMKEY") for _ in range(50)}
    assert picks == {b"a", b"b", b"c"}
    assert h.det.random_draws == draws + 50


def test_randomkey_skips_and_deletes_expired_keys(h: Harness) -> None:
    for i in range(10):
        h("SET", f"gone:{i}", i, "PX", 1)
    h.advance(2)
    out = h.out("RANDOMKEY")
    assert out.reply is None  # every draw found an expired key and deleted it
    assert out.effects and out.write
    assert h("DBSIZE") == 0
    h("SET", "gone", 1, "PX", 1)
    h("SET", "live", 1)
    h.advance(2)
    assert h("RANDOMKEY") == b"live"


# ------------------------------------------------------------------------------------------
# Effects, write classification, clock use


def test_is_write_and_outcome_write(h: Harness) -> None:
    for name in ("SET", "set", "DEL", "INCR", "APPEND", "MSET", "EXPIRE", "PERSIST", "FLUSHALL"):
        assert KVStore.is_write(args(name, "k", "v"))
    for name in ("GET", "MGET", "TTL", "KEYS", "SCAN", "INFO", "PING", "nosuch", "CLIENT"):
        assert not KVStore.is_write(args(name, "k"))
    assert not KVStore.is_write([])
    assert h.out("SET", "k", "v", "NX").write
    nothing = h.out("SET", "k", "v2", "NX")  # tried to write, changed nothing
    assert nothing.write and nothing.effects == b""
    assert h.out("GET", "k") == Outcome(b"v", b"", False)
    assert h.out("SET", "k").write  # an error reply of a write command is still a write


def test_reads_without_expiry_do_not_touch_the_clock(h: Harness) -> None:
    h("SET", "k", "v")
    h("GET", "k")
    h("INCR", "n")
    h("KEYS", "*")
    h("SCAN", 0)
    h("DBSIZE")
    assert h.det.clock_reads == 0


def test_the_clock_is_read_at_most_once_per_command(h: Harness) -> None:
    for i in range(20):
        h("SET", f"k{i}", i, "EX", 100)
    h.det.clock_reads = 0
    h("MGET", *[f"k{i}" for i in range(20)])
    assert h.det.clock_reads == 1
    h("SET", "x", 1, "PX", 5, "GET")
    assert h.det.clock_reads == 2


def test_apply_effects_rejects_garbage_atomically(h: Harness) -> None:
    effects = h.out("MSET", "a", 1, "b", 2).effects
    for bad in (effects[:-1], b"\x09" + effects[1:], effects + b"\x07", b"\x01"):
        backup = KVStore(NoDeterminism())
        with pytest.raises(WireError):
            backup.apply_effects(bad)
        assert backup.snapshot() == KVStore(NoDeterminism()).snapshot()
    backup = KVStore(NoDeterminism())
    backup.apply_effects(b"")
    backup.apply_effects(effects)
    assert backup.digest() == h.store.digest()


# ------------------------------------------------------------------------------------------
# Digest, snapshot, restore


def test_digest_matches_redis_debug_digest() -> None:
    h = Harness()
    assert h.store.digest() == bytes(20)
    h("SET", "a", "1")
    # Values computed by Redis 7.0.15's DEBUG DIGEST for the same data sets.
    assert h.store.digest().hex() == "943d800368fb9c0e951138f1bc0e313ac769d91f"
    h("SET", "b", "hello")
    assert h("DEBUG", "DIGEST") == SimpleString("2539797405e828ad7a3aa48c536b3eaf2803a421")


def test_digest_is_independent_of_insertion_order_but_sees_everything() -> None:
    one, two = Harness(), Harness()
    one("MSET", "a", 1, "b", 2, "c", 3)
    two("SET", "c", 3)
    two("SET", "b", 0)
    two("SET", "a", 1)
    two("SET", "b", 2)
    assert one.store.digest() == two.store.digest()
    assert one.store.snapshot() == two.store.snapshot()
    two("PEXPIREAT", "a", T0 + 1000)
    with_expiry = two.store.digest()
    assert with_expiry != one.store.digest()
    two("PEXPIREAT", "a", T0 + 1001)
    assert two.store.digest() != with_expiry  # the expiry time itself counts
    two("SET", "a", 2)
    assert two.store.digest() != one.store.digest()


def test_snapshot_restore_round_trip_preserves_digest_and_ttls(h: Harness) -> None:
    h("MSET", "a", 1, "b", b"\x00\xff", "", "empty")
    h("SET", "t", "v", "PX", 5000)
    h("SET", "gone", "v", "PX", 1)
    h.advance(1000)  # "gone" is expired but not yet reclaimed: it is part of the state
    data = h.store.snapshot()
    det = FakeDeterminism(now=h.det.now)
    restored = KVStore.restore(data, det)
    assert restored.digest() == h.store.digest()
    assert restored.snapshot() == data
    assert restored.execute(args("PTTL", "t")).reply == 4000
    assert restored.execute(args("GET", "gone")).reply is None
    assert restored.execute(args("MGET", "a", "b", "")).reply == [b"1", b"\x00\xff", b"empty"]
    assert restored.expire_due().reply == 0
    h.advance(5000)
    det.now = h.det.now
    assert restored.expire_due().reply == 1
    assert restored.execute(args("DBSIZE")).reply == 3


def test_a_stepped_snapshot_is_of_the_state_when_it_was_asked_for(h: Harness) -> None:
    """The agent encodes a joiner's snapshot step by step on its loop while writes go on."""
    h("MSET", "a", 1, "b", 2)
    h("SET", "t", "v", "PX", 5000)
    before = h.store.snapshot()
    steps = h.store.snapshot_steps()
    next(steps)
    h("SET", "a", "changed")
    h("DEL", "b")
    h("SET", "new", "x")
    h("PERSIST", "t")
    assert b"".join(run_steps(steps)[0]) == before
    assert h.store.snapshot() != before


@pytest.mark.parametrize("count", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 9 * 4096])
def test_a_stepped_snapshot_is_the_one_call_encoding_in_bounded_steps(count: int) -> None:
    """Same bytes whatever the slice boundaries; no step handles more than two slices."""
    rng = random.Random(count)
    store = KVStore(NoDeterminism())
    keys = [rng.randbytes(rng.randrange(0, 12)) + i.to_bytes(3, "big") for i in range(count)]
    rng.shuffle(keys)
    for i, k in enumerate(keys):
        store._data[k] = b"v%d" % i
        if i % 7 == 0:
            store._expires[k] = 1_000_000 + i
    parts, steps = run_steps(store.snapshot_steps())
    blob = b"".join(parts)
    assert blob == store.snapshot()
    slices = -(-count // kv._SNAPSHOT_SLICE)
    # slices sorted, pairwise merges (each at most 2 slices' worth per step), slices encoded
    assert steps <= slices + 2 * slices * max(1, slices.bit_length()) + slices
    restored = KVStore.restore(blob, NoDeterminism())
    assert restored._data == store._data and restored._expires == store._expires


@given(st.lists(st.binary(max_size=6), unique=True, max_size=300), st.integers(1, 9))
def test_sorting_in_steps_sorts(keys: list[bytes], slice_len: int) -> None:
    """The stepped merge sort is ``sorted`` for any distinct keys and any slice length."""
    assert run_steps(kv._sorted_steps(list(keys), slice_len))[0] == sorted(keys)


def test_restore_rejects_malformed_snapshots(h: Harness) -> None:
    h("MSET", "a", 1, "b", 2)
    h("SET", "t", "v", "PX", 5000)
    good = h.store.snapshot()
    for bad in (good[:-1], good + b"\x00", b"\x03" + good[1:], b"", good[:5], good[:9]):
        with pytest.raises(WireError):
            KVStore.restore(bad, NoDeterminism())
    assert KVStore.restore(good, NoDeterminism()).digest() == h.store.digest()
    # Keys out of order (or duplicated) are refused: a snapshot is canonical.
    encode = kv._encode_snapshot
    for keys in ([b"b", b"a"], [b"a", b"a"]):
        with pytest.raises(WireError, match="not strictly sorted"):
            KVStore.restore(encode(keys, [b"1", b"2"], []), NoDeterminism())
    for expiring in ([(1, 5), (0, 5)], [(0, 5), (0, 6)], [(2, 5)]):
        with pytest.raises(WireError, match="expiry positions"):
            KVStore.restore(encode([b"a", b"b"], [b"1", b"2"], expiring), NoDeterminism())
    # A forged count cannot make a node allocate for four billion keys.
    with pytest.raises(WireError, match="absurd"):
        KVStore.restore(b"\x02\xff\xff\xff\xff\x00\x00\x00\x00", NoDeterminism())


def _snapshot_v1(entries: list[tuple[bytes, bytes, int | None]]) -> bytes:
    """The first snapshot format, entry by entry (what an older primary still sends)."""
    w = Writer().u8(1).u32(len(entries))
    for key, value, at in entries:
        w.blob(key).blob(value)
        if at is None:
            w.u8(0)
        else:
            w.u8(1).u64(at & (2**64 - 1))
    return w.getvalue()


def test_a_version_1_snapshot_is_still_restored(h: Harness) -> None:
    """In a rolling upgrade the nodes restarted first join from a primary not yet upgraded."""
    h("MSET", "a", 1, "b", b"\x00\xff")
    h("SET", "t", "v", "PX", 5000)
    at = h.det.now + 5000
    old = _snapshot_v1([(b"a", b"1", None), (b"b", b"\x00\xff", None), (b"t", b"v", at)])
    restored = KVStore.restore(old, FakeDeterminism(now=h.det.now))
    assert restored.digest() == h.store.digest()
    assert restored.snapshot() == h.store.snapshot()
    with pytest.raises(WireError, match="not strictly sorted"):
        KVStore.restore(_snapshot_v1([(b"b", b"", None), (b"a", b"", None)]), NoDeterminism())


snapshot_keys = st.binary(max_size=12)


@given(
    st.dictionaries(snapshot_keys, st.binary(max_size=40), max_size=30),
    st.dictionaries(snapshot_keys, st.integers(-(2**63), 2**63 - 1), max_size=10),
)
def test_snapshots_round_trip_and_equal_states_give_equal_bytes(
    data: dict[bytes, bytes], ttl: dict[bytes, int]
) -> None:
    expires = {k: at for k, at in ttl.items() if k in data}
    got, got_expires = kv._decode_snapshot(_snapshot_of(data, expires))
    assert (got, got_expires) == (data, expires)
    assert list(got) == sorted(data)
    shuffled = dict(reversed(list(data.items())))
    assert _snapshot_of(shuffled, expires) == _snapshot_of(data, expires)


@given(st.binary(max_size=200))
def test_restore_of_arbitrary_bytes_either_works_or_says_why(blob: bytes) -> None:
    for data in (blob, b"\x02" + blob, b"\x01" + blob):
        try:
            store = KVStore.restore(data, NoDeterminism())
        except WireError as e:
            assert str(e), "refused without a reason"
        else:  # what was accepted is a canonical state
            assert KVStore.restore(store.snapshot(), NoDeterminism()).digest() == store.digest()


def _snapshot_of(data: dict[bytes, bytes], expires: dict[bytes, int]) -> bytes:
    store = KVStore(NoDeterminism())
    store._data.update(data)
    store._expires.update(expires)
    return store.snapshot()


# ------------------------------------------------------------------------------------------
# Replication properties

key_names = st.sampled_from([b"a", b"b", b"c", b"n", b"", b"k:1"])
small_values = st.sampled_from([b"0", b"1", b"-5", b"x", b"", b"9223372036854775807"])
ttl_values = st.sampled_from([b"-1", b"0", b"1", b"2", b"5", b"50", b"abc"])
abs_times = st.integers(T0 - 100, T0 + 20_000).map(lambda n: str(n).encode())


@st.composite
def any_command(draw: st.DrawFn) -> list[bytes]:
    k = draw(key_names)
    v = draw(small_values)
    t = draw(ttl_values)
    choice = draw(
        st.sampled_from(
            [
                [b"SET", k, v],
                [b"SET", k, v, b"PX", t],
                [b"SET", k, v, b"EX", t, b"NX"],
                [b"SET", k, v, b"XX", b"KEEPTTL", b"GET"],
                [b"SET", k, v, b"PXAT", draw(abs_times)],
                [b"SETEX", k, t, v],
                [b"GETEX", k, b"PX", t],
                [b"GETEX", k, b"PXAT", draw(abs_times)],
                [b"GETEX", k, b"PERSIST"],
                [b"GET", k],
                [b"GETSET", k, v],
                [b"GETDEL", k],
                [b"MGET", k, draw(key_names)],
                [b"MSET", k, v, draw(key_names), v],
                [b"MSETNX", k, v, draw(key_names), v],
                [b"DEL", k, draw(key_names)],
                [b"EXISTS", k],
                [b"INCR", k],
                [b"DECRBY", k, v],
                [b"APPEND", k, v],
                [b"EXPIRE", k, t, *draw(st.sampled_from([[], [b"NX"], [b"GT"], [b"LT"]]))],
                [b"PEXPIRE", k, t],
                [b"PEXPIREAT", k, draw(abs_times)],
                [b"PERSIST", k],
                [b"TTL", k],
                [b"PTTL", k],
                [b"KEYS", b"*"],
                [b"SCAN", b"0", b"COUNT", b"2"],
                [b"RANDOMKEY"],
                [b"DBSIZE"],
                [b"FLUSHALL"],
                [b"STRLEN", k],
                [b"TYPE", k],
            ]
        )
    )
    return choice


steps = st.lists(
    st.one_of(
        any_command().map(lambda argv: ("cmd", argv)),
        st.integers(0, 3000).map(lambda ms: ("advance", ms)),
        st.integers(1, 5).map(lambda n: ("expire_due", n)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_semi_passive_backup_reaches_the_same_state(
    trace: list[tuple[str, object]],
) -> None:
    det = FakeDeterminism()
    primary = KVStore(det)
    backup = KVStore(NoDeterminism())
    for kind, arg in trace:
        if kind == "advance":
            assert isinstance(arg, int)
            det.now += arg
            continue
        if kind == "cmd":
            assert isinstance(arg, list)
            out = primary.execute(arg)
        else:
            assert isinstance(arg, int)
            out = primary.expire_due(arg)
        backup.apply_effects(out.effects)
        assert backup.digest() == primary.digest()
    assert backup.snapshot() == primary.snapshot()
    restored = KVStore.restore(primary.snapshot(), NoDeterminism())
    assert restored.digest() == primary.digest()


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(0, 2**32))
def test_semi_active_replicas_given_the_same_vdf_values_agree(
    trace: list[tuple[str, object]], seed: int
) -> None:
    dets = [FakeDeterminism(seed=seed), FakeDeterminism(seed=seed)]
    stores = [KVStore(d) for d in dets]
    for kind, arg in trace:
        if kind == "advance":
            assert isinstance(arg, int)
            for d in dets:
                d.now += arg
            continue
        if kind == "cmd":
            assert isinstance(arg, list)
            outs = [s.execute(arg) for s in stores]
        else:
            assert isinstance(arg, int)
            outs = [s.expire_due(arg) for s in stores]
        assert outs[0] == outs[1]
    assert stores[0].digest() == stores[1].digest()
    assert stores[0].snapshot() == stores[1].snapshot()
    assert dets[0].clock_reads == dets[1].clock_reads


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([*sorted(kv._COMMANDS), b"nosuch", b"CLIENT", b"Debug"]),
    st.lists(
        st.sampled_from([b"", b"0", b"-1", b"EX", b"PX", b"NX", b"XX", b"GET", b"KEEPTTL",
                         b"GT", b"LT", b"MATCH", b"COUNT", b"TYPE", b"*", b"digest", b"setname",
                         b"9223372036854775807", b"-9223372036854775808"])
        | st.binary(max_size=5),
        max_size=6,
    ),
)  # fmt: skip
def test_execute_never_raises_on_client_input(name: bytes, rest: list[bytes]) -> None:
    h = Harness()
    backup = KVStore(NoDeterminism())
    for argv in (args("MSET", "k", 1, "a", 2), args("SET", "k", 1, "PX", 10), [name, *rest]):
        out = h.store.execute(argv)
        encode(out.reply)  # always a well-formed reply
        backup.apply_effects(out.effects)
        h.advance(7)
    assert backup.digest() == h.store.digest()


@pytest.mark.parametrize("count", [0, 1, 2047, 2048, 2049, 5 * 2048 + 3])
def test_a_stepped_restore_is_the_one_call_restore_in_bounded_steps(count: int) -> None:
    """Same store whatever the slice boundaries, a slice of keys per step."""
    rng = random.Random(count)
    store = KVStore(NoDeterminism())
    for i in range(count):
        k = rng.randbytes(rng.randrange(0, 12)) + i.to_bytes(3, "big")
        store._data[k] = rng.randbytes(rng.randrange(0, 40))
        if i % 5 == 0:
            store._expires[k] = 1_000_000 + i
    blob = store.snapshot()
    restored, steps = run_steps(KVStore.restore_steps(blob, NoDeterminism()))
    assert restored._data == store._data and restored._expires == store._expires
    assert sorted(restored._heap) == sorted((at, k) for k, at in store._expires.items())
    assert restored.snapshot() == blob
    assert steps == 2 + -(-count // kv._RESTORE_SLICE)  # the lengths, then a slice a step


def test_a_stepped_restore_refuses_keys_out_of_order_across_slices() -> None:
    """Each slice is checked against the last key of the one before it too."""
    n = kv._RESTORE_SLICE + 1
    keys = [b"%06d" % i for i in range(n)]
    keys[n - 1], keys[n - 2] = keys[n - 2], keys[n - 1]  # the last two swap: across a boundary
    blob = kv._encode_snapshot(keys, [b"v"] * n, [])
    with pytest.raises(WireError, match="not strictly sorted"):
        run_steps(KVStore.restore_steps(blob, NoDeterminism()))
    with pytest.raises(WireError, match="not strictly sorted"):
        KVStore.restore(blob, NoDeterminism())


@given(st.binary(max_size=200))
def test_restoring_any_bytes_gives_a_store_or_a_wire_error(data: bytes) -> None:
    """Stepped or not: a clear refusal for anything that is not a snapshot, never a crash."""
    try:
        stepped, _ = run_steps(KVStore.restore_steps(data, NoDeterminism()))
    except WireError:
        with pytest.raises(WireError):
            KVStore.restore(data, NoDeterminism())
    else:
        assert KVStore.restore(data, NoDeterminism())._data == stepped._data
