"""RESP2 parser and serializer: exact bytes, Redis' errors, limits, chunking, properties, fuzz."""

from __future__ import annotations

import copy
import itertools
import pickle
import random
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.service import resp
from appliance.service.resp import (
    INCOMPLETE,
    NULL_ARRAY,
    Error,
    ProtocolError,
    ReplyParser,
    RequestParser,
    RespValue,
    SimpleString,
    decode_reply,
    encode,
    protocol_error_reply,
)

PROPERTY = settings(max_examples=300, deadline=None)

Outcome = tuple[list[list[bytes]], str | None]


# --------------------------------------------------------------------------------------------
# Helpers


def request(argv: Sequence[bytes]) -> bytes:
    """The bytes redis-py sends for ``argv``: an array of bulk strings."""
    items: list[RespValue] = [*argv]
    return encode(items)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run(chunks: Iterable[bytes], parser: RequestParser | None = None) -> Outcome:
    """Feed ``chunks`` one by one, draining after each: the commands, then the error (if any)."""
    parser = parser if parser is not None else RequestParser()
    commands: list[list[bytes]] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (argv := parser.next_command()) is not None:
                commands.append(argv)
    except ProtocolError as err:
        return commands, str(err)
    return commands, None


def run_whole(data: bytes, **limits: int) -> Outcome:
    return run([data], RequestParser(**limits))


def run_bytewise(data: bytes, **limits: int) -> Outcome:
    return run([data[i : i + 1] for i in range(len(data))], RequestParser(**limits))


def parse_all(data: bytes) -> Outcome:
    """Parse ``data`` whole and byte by byte; the two must agree."""
    whole = run_whole(data)
    assert run_bytewise(data) == whole
    return whole


def error_of(data: bytes, **limits: int) -> str | None:
    whole = run_whole(data, **limits)
    assert run_bytewise(data, **limits) == whole
    return whole[1]


def replies(chunks: Iterable[bytes]) -> list[RespValue]:
    parser = ReplyParser()
    out: list[RespValue] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not INCOMPLETE:
            out.append(reply)
    assert parser.buffered == 0
    return out


def same(a: object, b: object) -> bool:
    """Equality that also compares types (SimpleString is not bytes, 1 is not True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# --------------------------------------------------------------------------------------------
# Values and encode


def test_simple_string_is_a_str() -> None:
    ok = SimpleString("OK")
    assert ok == "OK"
    assert isinstance(ok, str)
    assert repr(ok) == "SimpleString('OK')"
    assert hash(ok) == hash("OK")


def test_sentinels_are_singletons() -> None:
    assert copy.deepcopy(NULL_ARRAY) is NULL_ARRAY
    assert pickle.loads(pickle.dumps(NULL_ARRAY)) is NULL_ARRAY
    assert repr(NULL_ARRAY) == "NULL_ARRAY"
    assert repr(INCOMPLETE) == "INCOMPLETE"
    assert NULL_ARRAY is not None
    assert Error("ERR x") == Error("ERR x")
    with pytest.raises(AttributeError):
        Error("ERR x").message = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (SimpleString("OK"), b"+OK\r\n"),
        (SimpleString(""), b"+\r\n"),
        (SimpleString("caf\u00e9"), b"+caf\xc3\xa9\r\n"),
        (Error("ERR unknown command 'FOO'"), b"-ERR unknown command 'FOO'\r\n"),
        (Error("WRONGTYPE Operation"), b"-WRONGTYPE Operation\r\n"),
        (Error("ERR bad\r\nkey\n"), b"-ERR bad  key \r\n"),  # sanitized like Redis
        (0, b":0\r\n"),
        (42, b":42\r\n"),
        (-1, b":-1\r\n"),
        (-(2**63), b":-9223372036854775808\r\n"),
        (2**63 - 1, b":9223372036854775807\r\n"),
        (b"", b"$0\r\n\r\n"),
        (b"bar", b"$3\r\nbar\r\n"),
        (b"a\r\nb\x00\xff", b"$6\r\na\r\nb\x00\xff\r\n"),
        (None, b"$-1\r\n"),
        (NULL_ARRAY, b"*-1\r\n"),
        ([], b"*0\r\n"),
        ([b"GET", b"a"], b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"),
        (
            [1, [SimpleString("OK"), [None, NULL_ARRAY]], [], Error("ERR e"), b""],
            b"*5\r\n:1\r\n*2\r\n+OK\r\n*2\r\n$-1\r\n*-1\r\n*0\r\n-ERR e\r\n$0\r\n\r\n",
        ),
    ],
)
def test_encode(value: RespValue, wire: bytes) -> None:
    assert encode(value) == wire


def test_encode_accepts_other_bytes_likes_and_tuples() -> None:
    assert encode(bytearray(b"ab")) == b"$2\r\nab\r\n"  # type: ignore[arg-type]
    assert encode(memoryview(b"ab")) == b"$2\r\nab\r\n"  # type: ignore[arg-type]
    assert encode((b"a", 1)) == b"*2\r\n$1\r\na\r\n:1\r\n"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "exception"),
    [
        (True, TypeError),
        (False, TypeError),
        ([1, [True]], TypeError),
        ("OK", TypeError),
        ([b"a", "b"], TypeError),
        (1.5, TypeError),
        (object(), TypeError),
        ({b"a": b"b"}, TypeError),
        (SimpleString("O\r\nK"), ValueError),
        (SimpleString("O\nK"), ValueError),
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
    ],
)
def test_encode_rejects(value: object, exception: type[Exception]) -> None:
    with pytest.raises(exception):
        encode(value)  # type: ignore[arg-type]


def test_deep_nesting_needs_no_recursion() -> None:
    depth = 50_000
    value: RespValue = []
    for _ in range(depth):
        value = [value]
    wire = encode(value)
    assert wire == b"*1\r\n" * depth + b"*0\r\n"
    parsed = decode_reply(wire)
    for _ in range(depth):
        assert isinstance(parsed, list)
        assert len(parsed) == 1
        parsed = parsed[0]
    assert parsed == []


def test_protocol_error_reply() -> None:
    err = ProtocolError("invalid multibulk length")
    assert isinstance(err, ValueError)
    assert protocol_error_reply(err) == b"-ERR Protocol error: invalid multibulk length\r\n"
    crafted = ProtocolError("bad\r\nthing")
    assert protocol_error_reply(crafted) == b"-ERR Protocol error: bad  thing\r\n"


# --------------------------------------------------------------------------------------------
# Requests: arrays


def test_array_request() -> None:
    assert parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n") == ([[b"GET", b"a"]], None)


def test_array_arguments_are_binary_safe() -> None:
    argv = [b"SET", b"k\r\n", b"\x00\xff*$\r\n\n", b"", b"x" * 1000]
    assert parse_all(request(argv)) == ([argv], None)


def test_pipelined_arrays_and_inline() -> None:
    stream = (
        request([b"SET", b"a", b"1"])
        + b"GET a\r\n"
        + request([b"PING"])
        + b"ECHO x\n"
        + request([b"DEL", b"a", b"b"])
    )
    assert parse_all(stream) == (
        [[b"SET", b"a", b"1"], [b"GET", b"a"], [b"PING"], [b"ECHO", b"x"], [b"DEL", b"a", b"b"]],
        None,
    )


@pytest.mark.parametrize("empty", [b"*0\r\n", b"*-1\r\n", b"*-5\r\n"])
def test_empty_arrays_are_skipped(empty: bytes) -> None:
    assert parse_all(empty + b"PING\r\n" + empty) == ([[b"PING"]], None)
    parser = RequestParser()
    parser.feed(empty)
    assert parser.next_command() is None
    assert parser.buffered == 0


def test_incomplete_requests_wait() -> None:
    stream = request([b"SET", b"key", b"value"])
    for cut in range(len(stream)):
        parser = RequestParser()
        parser.feed(stream[:cut])
        assert parser.next_command() is None
        assert parser.buffered == cut
        parser.feed(stream[cut:])
        assert parser.next_command() == [b"SET", b"key", b"value"]
        assert parser.next_command() is None
        assert parser.buffered == 0


def test_header_lines_are_lenient_like_redis() -> None:
    # Redis skips the byte after a header's '\r' and the two bytes after bulk data unchecked.
    assert parse_all(b"*1\rX$4\r?PINGxy") == ([[b"PING"]], None)


def test_buffered_counts_a_partly_parsed_array() -> None:
    parser = RequestParser()
    parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r")
    assert parser.next_command() is None
    assert parser.buffered == 16
    parser.feed(b"\na\r\nPI")
    assert parser.next_command() == [b"GET", b"a"]
    assert parser.next_command() is None
    assert parser.buffered == 2


# --------------------------------------------------------------------------------------------
# Requests: inline


@pytest.mark.parametrize(
    ("stream", "commands"),
    [
        (b"PING\r\n", [[b"PING"]]),
        (b"PING\n", [[b"PING"]]),
        (b"SET a 1\r\n", [[b"SET", b"a", b"1"]]),
        (b"  SET \t a\t\t1   \r\n", [[b"SET", b"a", b"1"]]),
        (b"SET a\r1\r\r\n", [[b"SET", b"a", b"1"]]),  # a lone CR separates, like Redis
        (b"\r\n\n   \r\n\t\nPING\r\n", [[b"PING"]]),  # blank lines are skipped
        (b"\v\fGET a\vb \v \f\r\n", [[b"GET", b"a\vb"]]),  # \v \f are blanks only between args
        (b"GET a\x00b\r\n", [[b"GET", b"a\x00b"]]),  # NUL is an ordinary byte here
        (b"$3\r\n", [[b"$3"]]),  # not '*': inline
        (b"+PING\r\n:1\n", [[b"+PING"], [b":1"]]),
        (b"GET \xff\xfe\r\n", [[b"GET", b"\xff\xfe"]]),
    ],
)
def test_inline(stream: bytes, commands: list[list[bytes]]) -> None:
    assert parse_all(stream) == (commands, None)


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        (b'SET "a b" c', [b"SET", b"a b", b"c"]),
        (b'"\\n\\r\\t\\b\\a\\\\\\""', [b'\n\r\t\b\a\\"']),
        (b'"\\x41\\x4a\\x4A\\x00\\xff"', [b"AJJ\x00\xff"]),
        (b'"\\xZZ"', [b"xZZ"]),  # not a hex escape: \x is just 'x'
        (b'"\\x4"', [b"x4"]),
        (b'"\\q\\\'"', [b"q'"]),
        (b'"it\'s"', [b"it's"]),
        (b"'a b'", [b"a b"]),
        (b"'it\\'s'", [b"it's"]),
        (b"'a\\nb\\\\x'", [b"a\\nb\\\\x"]),  # single quotes only unescape \'
        (b"'say \"hi\"'", [b'say "hi"']),
        (b'a"b c"', [b"ab c"]),  # a quote may open mid-argument
        (b"x'b c' y", [b"xb c", b"y"]),
        (b'""', [b""]),
        (b"'' x ''", [b"", b"x", b""]),
        (b'"a"\tb', [b"a", b"b"]),
        (b'"a"\vb', [b"a", b"b"]),  # any C isspace() may follow a closing quote
        (b'"a\rb"', [b"a\rb"]),  # a CR inside quotes is kept
        (b'"a\x00b"', [b"a\x00b"]),
        (b'"a"', [b"a"]),
    ],
)
def test_inline_quoting(line: bytes, argv: list[bytes]) -> None:
    assert parse_all(line + b"\r\n") == ([argv], None)
    assert resp._split_quoted(line) == argv


@pytest.mark.parametrize(
    "line",
    [
        b'"abc',
        b"'abc",
        b'"abc\\"',
        b"'abc\\'",
        b"'a\\\\'",
        b'"a"b',
        b"'a'b",
        b'x "a"b',
        b'"',
        b"'",
        b'"\\',
    ],
)
def test_unbalanced_quotes(line: bytes) -> None:
    assert parse_all(b"PING\r\n" + line + b"\r\nPING\r\n") == (
        [[b"PING"]],
        "unbalanced quotes in request",
    )


# --------------------------------------------------------------------------------------------
# Requests: errors and limits


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"*-0\r\n", "invalid multibulk length"),
        (b"* 1\r\n", "invalid multibulk length"),
        (b"*1 \r\n", "invalid multibulk length"),
        (b"*1\n$4\r\nPING\r\n", "invalid multibulk length"),  # count line ends at the '\r'
        (b"*99999999999999999999\r\n", "invalid multibulk length"),
        (b"*1048577\r\n", "invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
        (b"*2\r\n$1\r\na\r\nb", "expected '$', got 'b'"),
        (b"*1\r\n\x01", "expected '$', got '\\x01'"),
        (b"*1\r\n\r\n", "expected '$', got '\\x0d'"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$01\r\n", "invalid bulk length"),
        (b"*1\r\n$536870913\r\n", "invalid bulk length"),  # > max_request (512 MiB)
        (b'GET "a\r\n', "unbalanced quotes in request"),
    ],
)
def test_protocol_errors(stream: bytes, message: str) -> None:
    assert error_of(stream) == message


def test_max_inline_applies_to_every_line() -> None:
    limits = {"max_inline": 8}
    assert run_whole(b"12345678", **limits) == ([], None)  # may still end
    assert error_of(b"123456789", **limits) == "too big inline request"
    assert error_of(b"1234567\r\n", **limits) is None  # 7 bytes + CR
    assert error_of(b"12345678\r\n", **limits) == "too big inline request"
    assert error_of(b"*00000000", **limits) == "too big mbulk count string"
    assert error_of(b"*00000000\r\n", **limits) == "too big mbulk count string"
    assert error_of(b"*1\r\n$00000000", **limits) == "too big bulk count string"
    assert error_of(b"*1\r\n$00000000\r\n", **limits) == "too big bulk count string"
    # The limit is per line: a pipeline of short lines of any total length is fine.
    assert run_whole(b"A B\r\n" * 100, **limits) == ([[b"A", b"B"]] * 100, None)


def test_default_max_inline_is_redis_64k() -> None:
    assert error_of(b"x" * (64 * 1024)) is None
    assert error_of(b"x" * (64 * 1024 + 1)) == "too big inline request"
    assert error_of(b"*" + b"1" * (64 * 1024)) == "too big mbulk count string"


def test_max_args() -> None:
    assert run_whole(request([b"a"] * 3), max_args=3) == ([[b"a"] * 3], None)
    assert error_of(request([b"a"] * 4), max_args=3) == "invalid multibulk length"
    # The default (Redis' 1024 * 1024) accepts the count and waits for the arguments.
    assert run_whole(b"*1048576\r\n") == ([], None)


def test_max_request() -> None:
    # 4 (*2) + 9 ($3 foo) + 7 ($1 b) = 20 bytes.
    assert run_whole(request([b"foo", b"b"]), max_request=20) == ([[b"foo", b"b"]], None)
    assert error_of(request([b"foo", b"ba"]), max_request=20) == "request too large"
    # Raised as soon as the header declaring too much arrives, before its data is buffered.
    assert run_whole(b"*2\r\n$3\r\nfoo\r\n$2\r\n", max_request=20) == ([], "request too large")
    # One bulk string longer than the limit is Redis' "invalid bulk length".
    assert error_of(b"*1\r\n$21\r\n", max_request=20) == "invalid bulk length"
    # The size is per request, not per connection.
    assert run_whole(request([b"foo", b"b"]) * 5, max_request=20)[1] is None


@pytest.mark.parametrize("name", ["max_request", "max_args", "max_inline"])
def test_limits_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RequestParser(**{name: 0})


def test_error_poisons_the_parser_but_not_the_next_one() -> None:
    parser = RequestParser()
    parser.feed(b"PING\r\n*x\r\nPING\r\n")
    assert parser.next_command() == [b"PING"]
    for _ in range(2):
        with pytest.raises(ProtocolError, match="invalid multibulk length"):
            parser.next_command()
    parser.feed(b"PING\r\n")  # ignored: the connection is being closed
    with pytest.raises(ProtocolError):
        parser.next_command()
    fresh = RequestParser()
    fresh.feed(b"PING\r\n")
    assert fresh.next_command() == [b"PING"]


# --------------------------------------------------------------------------------------------
# Requests: chunking and linear work


CORPUS = [
    request([b"SET", b"k", b"v" * 300]),
    b"  set \"a\\x41 b\" 'c\\'d'\r\n",
    b"\r\n\n",
    b"*0\r\n*-1\r\n",
    request([b"MSET", b"a\r\n", b"", b"\x00"]),
    b"PING\n",
    request([b"x" * 70_000]),
]


@pytest.mark.parametrize("tail", [b"", b"*1\r\n$x\r\n", b'"a', b"*1\r\n$1\r\nab", b"*2\r\n$1"])
def test_bytewise_equals_whole(tail: bytes) -> None:
    stream = b"".join(CORPUS) + tail
    whole = run_whole(stream)
    assert len(whole[0]) == 5
    assert run_bytewise(stream) == whole
    rng = random.Random(7)
    for _ in range(20):
        assert run(split(stream, rng.sample(range(len(stream)), 40))) == whole


class ScanCounter:
    """Wraps ``_Buffer.find`` to add up how many bytes the line searches examine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scanned = 0
        self.calls = 0
        original = resp._Buffer.find

        def find(buf: resp._Buffer, byte: int) -> int:
            start = max(buf._scan, buf.pos)
            index = original(buf, byte)
            self.scanned += (index + 1 if index >= 0 else len(buf.data)) - start
            self.calls += 1
            return index

        monkeypatch.setattr(resp._Buffer, "find", find)


def test_large_bulk_byte_by_byte_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = ScanCounter(monkeypatch)
    payload = bytes(range(256)) * 800  # 200 KiB
    stream = request([b"SET", b"k", payload])
    parser = RequestParser()
    got = []
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
        if (argv := parser.next_command()) is not None:
            got.append(argv)
    assert got == [[b"SET", b"k", payload]]
    # Waiting for bulk data searches nothing; header lines are searched once overall.
    assert counter.scanned <= 64
    assert counter.calls <= 3 * 16


def test_long_inline_line_byte_by_byte_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = ScanCounter(monkeypatch)
    line = b"SET k " + b"v" * 60_000 + b"\r\n"
    assert run_bytewise(line) == ([[b"SET", b"k", b"v" * 60_000]], None)
    assert counter.scanned <= len(line)


# --------------------------------------------------------------------------------------------
# Replies


def test_reply_parser_every_type_whole_and_bytewise() -> None:
    values: list[RespValue] = [
        SimpleString("OK"),
        Error("ERR x"),
        -7,
        b"a\r\nb",
        b"",
        None,
        NULL_ARRAY,
        [],
        [b"a", [1, [None, NULL_ARRAY, []]], SimpleString("QUEUED"), Error("WRONGTYPE y")],
    ]
    stream = b"".join(encode(v) for v in values)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        got = replies(chunks)
        assert same(got, values), got


def test_reply_parser_incomplete() -> None:
    parser = ReplyParser()
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b"*2\r\n$3\r\nfoo\r\n")
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b":1\r")
    assert parser.next_reply() is INCOMPLETE
    parser.feed(b"\n")
    assert parser.next_reply() == [b"foo", 1]
    assert parser.next_reply() is INCOMPLETE


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"?x\r\n", "unknown reply type '?'"),
        (b"\x00\r\n", "unknown reply type '\\x00'"),
        (b":01\r\n", "invalid integer b'01'"),
        (b":\r\n", "invalid integer b''"),
        (b":1.5\r\n", "invalid integer b'1.5'"),
        (b"$-2\r\n", "invalid bulk length"),
        (b"$x\r\n", "invalid bulk length"),
        (b"$3\r\nabcXY", "bulk string not followed by CRLF"),
        (b"*-2\r\n", "invalid multibulk length"),
        (b"*1\r\n*x\r\n", "invalid multibulk length"),
        (b"+a\rb\r\n", "expected '\\n' after '\\r'"),
    ],
)
def test_reply_parser_errors(wire: bytes, message: str) -> None:
    parser = ReplyParser()
    parser.feed(wire)
    with pytest.raises(ProtocolError) as info:
        parser.next_reply()
    assert str(info.value) == message
    parser.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError):  # poisoned
        parser.next_reply()


def test_reply_parser_max_bulk() -> None:
    parser = ReplyParser(max_bulk=3)
    parser.feed(b"$4\r\n")
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.next_reply()


def test_decode_reply() -> None:
    assert decode_reply(b"+OK\r\n") == SimpleString("OK")
    assert decode_reply(b"$-1\r\n") is None
    with pytest.raises(ProtocolError, match="incomplete"):
        decode_reply(b"*1\r\n")
    with pytest.raises(ProtocolError, match="trailing"):
        decode_reply(b"+OK\r\n+OK\r\n")


# --------------------------------------------------------------------------------------------
# Properties


argvs = st.lists(st.binary(max_size=40), min_size=1, max_size=6)

# Lone surrogates other than the parser's own escapes have no byte form (encode refuses them).
line_text = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=20
)
resp_values: st.SearchStrategy[RespValue] = st.recursive(
    st.one_of(
        line_text.map(SimpleString),
        line_text.map(Error),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.binary(max_size=30),
        st.none(),
        st.just(NULL_ARRAY),
    ),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)

# Byte soup biased towards RESP syntax, so that random input reaches the deep states.
FRAGMENTS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"3", b"-1", b"12", b" ", b"\t"]
FRAGMENTS += [b'"', b"'", b"\\", b"\\x4", b"\\x41", b"GET", b"\x00", b"\xff", b"*1\r\n$1\r\n"]
soup = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=4), max_size=40).map(b"".join),
)


@PROPERTY
@given(commands=st.lists(argvs, max_size=8), data=st.data())
def test_property_encoded_argv_round_trips_under_any_chunking(
    commands: list[list[bytes]], data: st.DataObject
) -> None:
    stream = b"".join(request(argv) for argv in commands)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert run(split(stream, cuts)) == (commands, None)


@PROPERTY
@given(values=st.lists(resp_values, min_size=1, max_size=4), data=st.data())
def test_property_reply_parser_inverts_encode(values: list[RespValue], data: st.DataObject) -> None:
    for value in values:
        assert same(decode_reply(encode(value)), value)
    stream = b"".join(encode(value) for value in values)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert same(replies(split(stream, cuts)), values)


@PROPERTY
@given(
    stream=soup,
    data=st.data(),
    max_inline=st.sampled_from([4, 16, 64 * 1024]),
    max_args=st.sampled_from([2, 1024 * 1024]),
    max_request=st.sampled_from([24, 512 * 1024 * 1024]),
)
def test_property_any_bytes_yield_commands_need_more_or_protocol_error(
    stream: bytes, data: st.DataObject, max_inline: int, max_args: int, max_request: int
) -> None:
    limits = {"max_inline": max_inline, "max_args": max_args, "max_request": max_request}
    parser = RequestParser(**limits)
    parser.feed(stream)
    commands: list[list[bytes]] = []
    try:
        while (argv := parser.next_command()) is not None:
            assert argv
            assert all(type(arg) is bytes for arg in argv)
            commands.append(argv)
    except ProtocolError as err:
        outcome: Outcome = (commands, str(err))
    else:
        outcome = (commands, None)
        assert parser.buffered <= len(stream)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert run(split(stream, cuts), RequestParser(**limits)) == outcome


@PROPERTY
@given(line=st.lists(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\v", b"\f", b"a", b"\\"])))
def test_property_fast_inline_split_matches_the_general_one(line: list[bytes]) -> None:
    joined = b"".join(line)
    assert resp._split_inline(joined) == resp._split_quoted(joined)


# --------------------------------------------------------------------------------------------
# Seeded mutation fuzz

FUZZ_ROUNDS = 20_000
INTERESTING = b"*$\r\n\"'\\-0123456789 x"


def valid_request(rng: random.Random) -> bytes:
    argv = [rng.randbytes(rng.choice([0, 1, 3, 8, 30])) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.7:
        return request(argv)
    words = [b"SET", b"k", b'"a \\x41\\n"', b"'it\\'s'", b"v", b'""']
    line = b" ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
    return line + rng.choice([b"\r\n", b"\n"])


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice(INTERESTING)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 4)]
        elif op == 4:
            del buf[pos:]
        else:
            buf[pos:pos] = bytes([rng.choice(INTERESTING)]) * rng.randint(1, 3)
    return bytes(buf)


def test_fuzz_only_protocol_errors_escape_and_new_parsers_start_clean() -> None:
    rng = random.Random(20240607)
    probe = request([b"SET", b"after", b"error"])
    messages: dict[str, int] = {}
    completed = 0
    for _ in range(FUZZ_ROUNDS):
        stream = b"".join(mutate(rng, valid_request(rng)) for _ in range(rng.randint(1, 3)))
        limits = rng.choice([{}, {"max_inline": 8, "max_args": 3, "max_request": 40}])
        whole = run([stream], RequestParser(**limits))
        cuts = rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 6)))
        assert run(split(stream, cuts), RequestParser(**limits)) == whole, stream
        commands, message = whole
        completed += len(commands)
        if message is not None:
            messages[message] = messages.get(message, 0) + 1
            # The next connection gets a fresh parser, untouched by the failure.
            assert run([probe], RequestParser(**limits)) == ([[b"SET", b"after", b"error"]], None)
    assert completed > FUZZ_ROUNDS // 2
    assert sum(messages.values()) > FUZZ_ROUNDS // 20
    for expected in (
        "invalid multibulk length",
        "invalid bulk length",
        "unbalanced quotes in request",
        "too big inline request",
        "request too large",
    ):
        assert messages.get(expected, 0) > 0, messages
    assert any(m.startswith("expected '$', got ") for m in messages), messages


def test_encode_refuses_a_line_with_a_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="not encodable"):
        encode(SimpleString("\ud800"))
