"""RESP2, the Redis serialization protocol: a pure parser and serializer.

Sans-I/O: bytes in, values out; no sockets, no asyncio. The connection handler owns the socket
and does three things with this module::

    parser = RequestParser()
    ...
    parser.feed(chunk)                      # whatever recv() returned, any size
    try:
        while (argv := parser.next_command()) is not None:
            transport.write(encode(execute(argv)))
    except ProtocolError as err:
        transport.write(protocol_error_reply(err))   # b"-ERR Protocol error: ...\\r\\n"
        transport.close()

Requests
    A request is either a RESP array of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\na\\r\\n``,
    what redis-cli and redis-py send) or an *inline command*: one line of text, as typed into
    ``nc`` or ``telnet`` (``SET a 1\\r\\n``). As in Redis, a request whose first byte is ``*`` is
    an array and anything else is inline. :class:`RequestParser` follows Redis'
    ``processMultibulkBuffer``/``processInlineBuffer`` and ``sdssplitargs`` closely, including
    their error texts, with these documented choices:

    * Like Redis, an array count ``<= 0`` (``*0``, ``*-1``) is an empty request and is skipped,
      and so is an empty (or all-blank) inline line.
    * Like Redis, the byte after the ``\\r`` of a header line and the two bytes after a bulk
      string's data are skipped without checking that they are ``\\n`` / ``\\r\\n``: lengths
      frame the request, so being lenient there cannot desynchronise it.
    * Unlike Redis, which reads the inline line as a C string and silently drops everything
      after a NUL byte, NUL is an ordinary byte in an inline command.
    * Unlike Redis, ``expected '$', got 'X'`` is raised as soon as the wrong byte arrives (Redis
      waits for the end of the line); non-printable bytes are shown as ``\\xHH``.
    * Every "line too long" check is applied to the line itself, whether or not its end has
      arrived yet, so the outcome never depends on how the stream was split into chunks:
      feeding a stream byte by byte gives exactly the commands and error of feeding it at once.

Limits (all raise :class:`ProtocolError`; the caller answers and closes the connection)
    ``max_inline`` (64 KiB, Redis' ``PROTO_INLINE_MAX_SIZE``) bounds every line: an inline
    command ("too big inline request"), an array count line ("too big mbulk count string") and a
    bulk length line ("too big bulk count string"). ``max_args`` bounds the array count
    ("invalid multibulk length", as Redis). ``max_request`` (512 MiB, Redis'
    ``proto-max-bulk-len``) bounds one bulk string ("invalid bulk length", as Redis) and also the
    whole array request: header lines, data and CRLFs as declared so far, checked as each bulk
    header is read, i.e. before its data is buffered ("request too large"; Redis has no such
    reply and instead disconnects a client whose query buffer passes 1 GiB).

Replies
    :func:`encode` turns a :data:`RespValue` into bytes: :class:`SimpleString` -> ``+OK``,
    :class:`Error` -> ``-ERR ...``, ``int`` -> ``:n``, ``bytes`` -> a bulk string, ``None`` -> the
    null bulk string ``$-1``, :data:`NULL_ARRAY` -> the null array ``*-1``, ``list`` -> an array.
    :class:`ReplyParser` is the inverse, for tests and tools (``ReplyParser`` on ``encode(v)``
    gives back ``v``, types included).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "INCOMPLETE",
    "NULL_ARRAY",
    "Error",
    "Incomplete",
    "NullArray",
    "ProtocolError",
    "ReplyParser",
    "RequestParser",
    "RespValue",
    "SimpleString",
    "decode_reply",
    "encode",
    "protocol_error_reply",
    "to_resp3",
]


# --------------------------------------------------------------------------------------------
# Values


class SimpleString(str):
    """A RESP simple string (status reply), e.g. ``+OK``.

    A ``str`` subclass, so ``SimpleString("OK") == "OK"``; it is a distinct type so that
    :func:`encode` can tell a status reply from a bulk string (which is ``bytes``). It must not
    contain ``\\r`` or ``\\n`` (:func:`encode` raises ``ValueError``).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SimpleString({str.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class Error:
    """A RESP error reply, e.g. ``-ERR unknown command 'FOO'`` or ``-WRONGTYPE ...``.

    ``message`` is the full text without the leading ``-``; by convention its first word is the
    error code (``ERR``, ``WRONGTYPE``). Like Redis' ``addReplyErrorFormat``, :func:`encode`
    replaces any ``\\r`` or ``\\n`` in it with a space, so a message quoting client input can
    never break the framing.
    """

    message: str


class NullArray(enum.Enum):
    """The type of :data:`NULL_ARRAY`, RESP2's null array ``*-1``.

    A single-member enum, so the sentinel survives copy and pickle and type checkers narrow
    ``value is NULL_ARRAY``.
    """

    NULL_ARRAY = "NULL_ARRAY"

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY: Final = NullArray.NULL_ARRAY
"""The null array, serialized as ``*-1\\r\\n`` (distinct from the null bulk string ``None``)."""

RespValue: TypeAlias = SimpleString | Error | int | bytes | NullArray | list["RespValue"] | None
"""Any RESP2 value: ``bytes`` is a bulk string, ``None`` the null bulk string ``$-1``,
``list`` an array (nested to any depth) and :data:`NULL_ARRAY` the null array ``*-1``."""


class Incomplete(enum.Enum):
    """The type of :data:`INCOMPLETE`, returned by :meth:`ReplyParser.next_reply`."""

    INCOMPLETE = "INCOMPLETE"

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Final = Incomplete.INCOMPLETE
"""Returned by :meth:`ReplyParser.next_reply` when more bytes are needed.

A sentinel rather than ``None`` because ``None`` is a valid reply (the null bulk string)."""


class ProtocolError(ValueError):
    """Malformed or oversized input.

    ``str(err)`` is the client-facing text that follows ``ERR Protocol error: `` (for example
    ``invalid multibulk length``); :func:`protocol_error_reply` builds the whole reply.
    """


# --------------------------------------------------------------------------------------------
# Serializer

_CRLF: Final = b"\r\n"
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _line_text(text: str) -> bytes:
    """UTF-8, with the bytes the parser decoded as surrogate escapes restored.

    A status or error line holding any other lone surrogate has no byte form: ValueError.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise ValueError(f"line text {text!r} is not encodable: {e.reason}") from None


def encode(value: RespValue, *, resp3: bool = False) -> bytes:
    """Serialize one RESP2 value (arrays nested to any depth; no recursion limit).

    ``resp3``: for a connection that chose RESP3 with ``HELLO 3``, both nulls are RESP3's
    ``_`` (RESP3 parsers do not accept ``$-1`` or ``*-1``); every other RESP2 type is valid
    RESP3 unchanged.

    Raises ``TypeError`` for a ``bool`` (``True`` is not ``:1``: say which you mean) and for a
    plain ``str`` (ambiguous: use :class:`SimpleString` for a status reply or ``bytes`` for a
    bulk string), and ``ValueError`` for a :class:`SimpleString` containing ``\\r`` or ``\\n``
    or an ``int`` outside the signed 64-bit range RESP clients accept. ``bytearray`` and
    ``memoryview`` are accepted as bulk strings and tuples as arrays.
    """
    out: list[bytes] = []
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, SimpleString):
            if "\r" in item or "\n" in item:
                raise ValueError(f"a simple string cannot contain CR or LF: {item!r}")
            out += (b"+", _line_text(item), _CRLF)
        elif isinstance(item, Error):
            text = item.message.replace("\r", " ").replace("\n", " ")
            out += (b"-", _line_text(text), _CRLF)
        elif isinstance(item, bool):
            raise TypeError("cannot encode a bool: pass int(flag) for :0/:1")
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise ValueError(f"integer reply out of the signed 64-bit range: {item}")
            out.append(b":%d\r\n" % item)
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
            out += (b"$%d\r\n" % len(data), data, _CRLF)
        elif item is None:
            out.append(b"_\r\n" if resp3 else b"$-1\r\n")
        elif item is NULL_ARRAY:
            out.append(b"_\r\n" if resp3 else b"*-1\r\n")
        elif isinstance(item, list | tuple):
            out.append(b"*%d\r\n" % len(item))
            stack.extend(reversed(item))
        elif isinstance(item, str):
            raise TypeError(
                "cannot encode a plain str: use SimpleString(...) for a status reply "
                "or bytes for a bulk string"
            )
        else:
            raise TypeError(f"cannot encode {type(item).__name__} as RESP2")
    return b"".join(out)


def to_resp3(reply: bytes) -> bytes:
    """One complete RESP2 reply as a RESP3 client expects it (the nulls become ``_``).

    Replies without a null pass through untouched; the rest are re-encoded.
    """
    if b"-1\r\n" not in reply:
        return reply
    return encode(decode_reply(reply), resp3=True)


def protocol_error_reply(err: ProtocolError) -> bytes:
    """The reply to send before closing a connection: ``b"-ERR Protocol error: ...\\r\\n"``."""
    return encode(Error(f"ERR Protocol error: {err}"))


# --------------------------------------------------------------------------------------------
# Shared parsing helpers

_CR: Final = 0x0D
_LF: Final = 0x0A
_STAR: Final = ord("*")
_DOLLAR: Final = ord("$")

# Redis' string2ll: optional '-', no '+', no leading zeros, no "-0", no blanks, fits in int64.
_INT_RE: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")

_COMPACT_AT: Final = 64 * 1024


def _parse_int(text: bytes | bytearray) -> int | None:
    """Redis' ``string2ll``: the value of a canonical signed 64-bit decimal, else ``None``."""
    if _INT_RE.fullmatch(text) is None:
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _show_byte(byte: int) -> str:
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


class _Buffer:
    """A receive buffer with a read position and a memo of where a line search stopped.

    The memo makes waiting for the end of a long line linear overall: a search resumes where the
    previous one, at the same position, gave up instead of rescanning from the line's start.
    Consumed bytes are dropped lazily so a long pipeline is not copied once per command.
    """

    __slots__ = ("_scan", "data", "pos")

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0
        self._scan = 0

    def append(self, chunk: bytes) -> None:
        pos = self.pos
        if pos and (pos == len(self.data) or (pos >= _COMPACT_AT and 2 * pos >= len(self.data))):
            del self.data[:pos]
            self._scan -= pos
            self.pos = 0
        self.data += chunk

    @property
    def pending(self) -> int:
        return len(self.data) - self.pos

    def advance(self, pos: int) -> None:
        self.pos = pos
        self._scan = pos

    def find(self, byte: int) -> int:
        """Index of the first ``byte`` at or after ``pos``, or -1 (remembering where it stopped)."""
        index = self.data.find(byte, max(self._scan, self.pos))
        if index < 0:
            self._scan = len(self.data)
        return index


# --------------------------------------------------------------------------------------------
# Requests

_BLANKS: Final = frozenset(b" \t\n\r\v\f")  # C isspace(): skipped between arguments
_SEPARATORS_RE: Final = re.compile(rb"[ \t\n\r]+")  # what ends an unquoted argument
_ESCAPES: Final = {ord("n"): _LF, ord("r"): _CR, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_DQUOTE: Final = ord('"')
_SQUOTE: Final = ord("'")
_BACKSLASH: Final = ord("\\")


def _split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command into arguments like Redis' ``sdssplitargs``; ``None`` if unbalanced.

    Arguments are separated by spaces, tabs, CRs and LFs; blanks (which also include ``\\v`` and
    ``\\f``) before an argument are skipped. ``"double quotes"`` understand ``\\n \\r \\t \\b \\a
    \\xHH`` and ``\\<any>`` (that character); ``'single quotes'`` only ``\\'``. Quotes may start in
    the middle of an argument (``a"b c"`` is ``ab c``), ``""`` is an empty argument, and a closing
    quote must be followed by a blank or the end of the line.
    """
    if _DQUOTE not in line and _SQUOTE not in line:  # the common case, without a Python loop
        return [arg for token in _SEPARATORS_RE.split(line) if (arg := token.lstrip(b"\v\f"))]
    return _split_quoted(line)


def _split_quoted(line: bytes) -> list[bytes] | None:
    """:func:`_split_inline`, byte by byte: the general case (any line, quoted or not)."""
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if i >= n:
                if in_double or in_single:
                    return None  # unterminated quotes
                break
            c = line[i]
            if in_double:
                if (
                    c == _BACKSLASH
                    and i + 3 < n
                    and line[i + 1] == ord("x")
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                elif c == _BACKSLASH and i + 1 < n:
                    escaped = line[i + 1]
                    current.append(_ESCAPES.get(escaped, escaped))
                    i += 2
                elif c == _DQUOTE:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        return None  # closing quote must be followed by a blank or the end
                    i += 1
                    break
                else:
                    current.append(c)
                    i += 1
            elif in_single:
                if c == _BACKSLASH and i + 1 < n and line[i + 1] == _SQUOTE:
                    current.append(_SQUOTE)
                    i += 2
                elif c == _SQUOTE:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        return None
                    i += 1
                    break
                else:
                    current.append(c)
                    i += 1
            elif c in b" \t\n\r":
                i += 1
                break
            elif c == _DQUOTE:
                in_double = True
                i += 1
            elif c == _SQUOTE:
                in_single = True
                i += 1
            else:
                current.append(c)
                i += 1
        args.append(bytes(current))


class RequestParser:
    """Incremental parser of client requests (RESP arrays of bulk strings and inline commands).

    :meth:`feed` whatever arrived, then call :meth:`next_command` until it returns ``None``.
    Any split of the stream into chunks (byte by byte included) gives the same commands and the
    same error as feeding it at once, and the work is linear in the bytes fed: a large bulk
    string trickling in is neither rescanned nor copied until it is complete.

    After a :class:`ProtocolError` the parser is poisoned: :meth:`next_command` raises the same
    error again and :meth:`feed` discards data. The connection is to be closed; a new connection
    gets a new parser (parsers share no state). See the module docstring for the limits.
    """

    __slots__ = (
        "_args_left",
        "_argv",
        "_buf",
        "_bulk_len",
        "_error",
        "_max_args",
        "_max_inline",
        "_max_request",
        "_partial",
        "_request_size",
    )

    def __init__(
        self,
        max_request: int = 512 * 1024 * 1024,
        max_args: int = 1024 * 1024,
        max_inline: int = 64 * 1024,
    ) -> None:
        for name, limit in (
            ("max_request", max_request),
            ("max_args", max_args),
            ("max_inline", max_inline),
        ):
            if limit < 1:
                raise ValueError(f"{name} must be positive, got {limit}")
        self._max_request = max_request
        self._max_args = max_args
        self._max_inline = max_inline
        self._buf = _Buffer()
        self._args_left = 0  # > 0 while inside an array request
        self._bulk_len = -1  # length of the bulk string being read; -1 while expecting its header
        self._argv: list[bytes] = []  # arguments of the array request read so far
        self._request_size = 0  # declared bytes of the current array request
        self._partial = 0  # bytes of the current array request already moved into _argv
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed that are not part of a returned command yet (0 means "between commands").

        This includes the part of an array request already parsed, so a connection that closes
        with ``buffered > 0`` closed in the middle of a request.
        """
        return self._buf.pending + self._partial

    def feed(self, data: bytes) -> None:
        """Append received bytes (any amount, any split); ignored after a ProtocolError."""
        if self._error is None and data:
            self._buf.append(data)

    def next_command(self) -> list[bytes] | None:
        """The next complete command's argv (never empty), or ``None`` if more bytes are needed.

        Raises :class:`ProtocolError` on malformed or oversized input.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_command()
        except ProtocolError as err:
            self._error = err
            raise

    # -- internals ----------------------------------------------------------------------------

    def _next_command(self) -> list[bytes] | None:
        buf = self._buf
        while True:
            if self._args_left == 0:
                if buf.pending == 0:
                    return None
                if buf.data[buf.pos] == _STAR:
                    if not self._read_array_header():
                        return None
                    continue  # now inside the array, or it was empty and skipped
                argv = self._read_inline()
                if argv is None:
                    return None
                if argv:
                    return argv
                continue  # a blank line
            if self._bulk_len < 0 and not self._read_bulk_header():
                return None
            start = buf.pos
            end = start + self._bulk_len
            if len(buf.data) < end + 2:
                return None
            self._argv.append(bytes(buf.data[start:end]))
            buf.advance(end + 2)  # like Redis, the CRLF after the data is not checked
            self._partial += self._bulk_len + 2
            self._bulk_len = -1
            self._args_left -= 1
            if self._args_left == 0:
                argv, self._argv = self._argv, []
                self._partial = 0
                return argv

    def _line_end(self, terminator: int, too_big: str) -> int:
        """Index of the terminator of the line at ``pos``, -1 if it has not arrived yet.

        The length limit applies to the line whether or not its end has arrived, so the outcome
        does not depend on chunking.
        """
        buf = self._buf
        end = buf.find(terminator)
        if (end - buf.pos if end >= 0 else buf.pending) > self._max_inline:
            raise ProtocolError(too_big)
        return end

    def _read_array_header(self) -> bool:
        """Consume ``*<count>\\r\\n``; False if it is not complete yet."""
        buf = self._buf
        end = self._line_end(_CR, "too big mbulk count string")
        if end < 0 or end + 2 > len(buf.data):
            return False
        count = _parse_int(buf.data[buf.pos + 1 : end])
        if count is None or count > self._max_args:
            raise ProtocolError("invalid multibulk length")
        size = end + 2 - buf.pos
        buf.advance(end + 2)
        if count > 0:  # *0, *-1 (and any count <= 0, like Redis) are empty and skipped
            self._args_left = count
            self._request_size = self._partial = size
        return True

    def _read_bulk_header(self) -> bool:
        """Consume ``$<length>\\r\\n``; False if it is not complete yet."""
        buf = self._buf
        if buf.pending == 0:
            return False
        first = buf.data[buf.pos]
        if first != _DOLLAR:
            raise ProtocolError(f"expected '$', got '{_show_byte(first)}'")
        end = self._line_end(_CR, "too big bulk count string")
        if end < 0 or end + 2 > len(buf.data):
            return False
        length = _parse_int(buf.data[buf.pos + 1 : end])
        if length is None or length < 0 or length > self._max_request:
            raise ProtocolError("invalid bulk length")
        size = end + 2 - buf.pos
        self._request_size += size + length + 2
        if self._request_size > self._max_request:
            raise ProtocolError("request too large")
        buf.advance(end + 2)
        self._partial += size
        self._bulk_len = length
        return True

    def _read_inline(self) -> list[bytes] | None:
        """Consume one inline line; its argv (empty for a blank line) or None if incomplete."""
        buf = self._buf
        end = self._line_end(_LF, "too big inline request")
        if end < 0:
            return None
        stop = end - 1 if end > buf.pos and buf.data[end - 1] == _CR else end
        line = bytes(buf.data[buf.pos : stop])
        buf.advance(end + 1)
        argv = _split_inline(line)
        if argv is None:
            raise ProtocolError("unbalanced quotes in request")
        return argv


# --------------------------------------------------------------------------------------------
# Replies


class ReplyParser:
    """Incremental parser of server replies (all RESP2 types, arrays nested to any depth).

    For tests and tools. :meth:`feed` bytes, then call :meth:`next_reply` until it returns
    :data:`INCOMPLETE`::

        while (reply := parser.next_reply()) is not INCOMPLETE:
            handle(reply)          # mypy has narrowed reply to RespValue here

    It is strict (lines must end in CRLF, integers must be canonical, a bulk string's data must
    be followed by CRLF) because its job is to catch a server that emits bad RESP; any violation
    raises :class:`ProtocolError` and poisons the parser. Parsing is iterative and incremental:
    neither a deep array nor a byte-by-byte feed makes it recurse or rescan.
    """

    __slots__ = ("_buf", "_error", "_max_bulk", "_stack")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024) -> None:
        self._max_bulk = max_bulk
        self._buf = _Buffer()
        # Arrays being filled, outermost first: (declared length, elements so far).
        self._stack: list[tuple[int, list[RespValue]]] = []
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet consumed (elements of an unfinished array count as consumed)."""
        return self._buf.pending

    def feed(self, data: bytes) -> None:
        """Append received bytes (any amount, any split); ignored after a ProtocolError."""
        if self._error is None and data:
            self._buf.append(data)

    def next_reply(self) -> RespValue | Incomplete:
        """The next complete reply, or :data:`INCOMPLETE` if more bytes are needed.

        Raises :class:`ProtocolError` on malformed input.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_reply()
        except ProtocolError as err:
            self._error = err
            raise

    def _next_reply(self) -> RespValue | Incomplete:
        buf = self._buf
        while True:
            if buf.pending == 0:
                return INCOMPLETE
            data = buf.data
            start = buf.pos
            kind = data[start]
            end = buf.find(_CR)
            if end < 0 or end + 1 >= len(data):
                return INCOMPLETE
            if data[end + 1] != _LF:
                raise ProtocolError("expected '\\n' after '\\r'")
            line = data[start + 1 : end]
            value: RespValue
            if kind == ord("+"):
                value = SimpleString(line.decode("utf-8", "surrogateescape"))
            elif kind == ord("-"):
                value = Error(line.decode("utf-8", "surrogateescape"))
            elif kind == ord(":"):
                number = _parse_int(line)
                if number is None:
                    raise ProtocolError(f"invalid integer {bytes(line)!r}")
                value = number
            elif kind == _DOLLAR:
                length = _parse_int(line)
                if length is None or length < -1 or length > self._max_bulk:
                    raise ProtocolError("invalid bulk length")
                if length == -1:
                    value = None
                else:
                    data_end = end + 2 + length
                    if len(data) < data_end + 2:
                        return INCOMPLETE
                    if data[data_end : data_end + 2] != _CRLF:
                        raise ProtocolError("bulk string not followed by CRLF")
                    value = bytes(data[end + 2 : data_end])
                    end = data_end
            elif kind == _STAR:
                count = _parse_int(line)
                if count is None or count < -1:
                    raise ProtocolError("invalid multibulk length")
                if count > 0:
                    buf.advance(end + 2)
                    self._stack.append((count, []))
                    continue
                value = NULL_ARRAY if count == -1 else []
            else:
                raise ProtocolError(f"unknown reply type '{_show_byte(kind)}'")
            buf.advance(end + 2)
            # Attach the value to the innermost open array, closing every array it completes.
            while self._stack:
                count, items = self._stack[-1]
                items.append(value)
                if len(items) < count:
                    break
                self._stack.pop()
                value = items
            else:
                return value


def decode_reply(data: bytes) -> RespValue:
    """Parse exactly one complete reply (a convenience for tests).

    Raises :class:`ProtocolError` if ``data`` is malformed, incomplete or has trailing bytes.
    """
    parser = ReplyParser()
    parser.feed(data)
    value = parser.next_reply()
    if value is INCOMPLETE:
        raise ProtocolError("incomplete reply")
    if parser.buffered:
        raise ProtocolError("trailing bytes after the reply")
    return value
