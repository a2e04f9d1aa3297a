"""What a client connection negotiates with its node: authentication and the RESP version.

These commands belong to the connection, not to the replicated data, so the gateway answers them
itself and never orders them through the primary: ``AUTH`` (Redis' ``requirepass`` model, the
only user is ``default``), ``HELLO [2|3] [AUTH user pass] [SETNAME name]`` (redis-py 8 opens
every connection with ``HELLO 3``), and ``CLIENT SETNAME | GETNAME | SETINFO | ID``. Everything
else is forwarded, except that a connection that has not authenticated gets ``-NOAUTH``.

The replicated service always answers in RESP2; for a connection that chose RESP3 the gateway
rewrites the two RESP2 nulls (``$-1``, ``*-1``), the only RESP2 forms RESP3 parsers reject.
"""

from __future__ import annotations

import hmac
from typing import Final

from appliance import __version__
from appliance.service.resp import Error, RespValue, encode, to_resp3

__all__ = ["ClientSession"]

NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"
WRONGPASS: Final = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NO_PASSWORD: Final = (
    b"-ERR AUTH <password> called without any password configured for the default user. "
    b"Are you sure your configuration is correct?\r\n"
)
REDIS_VERSION: Final = "7.0.0"
"""The Redis version HELLO reports: the command set this gateway's clients can rely on."""

_BEFORE_AUTH: Final = frozenset({b"AUTH", b"HELLO", b"QUIT"})
_OK: Final = b"+OK\r\n"


def _err(text: str) -> bytes:
    return encode(Error(text))


class ClientSession:
    """One connection's negotiated state; :meth:`answer` handles the connection commands."""

    def __init__(self, client_id: int, requirepass: str | None) -> None:
        self.id = client_id
        self._password = requirepass.encode() if requirepass is not None else None
        self.authenticated = requirepass is None
        self.resp3 = False
        self.name: bytes | None = None
        self.lib: dict[bytes, bytes] = {}

    def answer(self, argv: list[bytes]) -> bytes | None:
        """The reply to a command the connection answers itself, or None to forward it."""
        name = argv[0].upper()
        if name == b"AUTH":
            return self._auth(argv)
        if name == b"HELLO":
            return self._hello(argv)
        if not self.authenticated and name not in _BEFORE_AUTH:
            return NOAUTH
        if name == b"CLIENT" and len(argv) >= 2:
            return self._client(argv)
        return None

    def shape(self, reply: bytes) -> bytes:
        """A reply of the replicated service, in the RESP version this connection chose."""
        return to_resp3(reply) if self.resp3 else reply

    # -- AUTH --------------------------------------------------------------------------------

    def _check(self, user: bytes, password: bytes) -> bytes | None:
        """None if ``user``/``password`` authenticate, else the error reply."""
        if self._password is None:
            return NO_PASSWORD
        ok = hmac.compare_digest(password, self._password)
        if user != b"default" or not ok:
            return WRONGPASS
        self.authenticated = True
        return None

    def _auth(self, argv: list[bytes]) -> bytes:
        if len(argv) == 2:
            return self._check(b"default", argv[1]) or _OK
        if len(argv) == 3:
            return self._check(argv[1], argv[2]) or _OK
        if len(argv) < 2:
            return _err("ERR wrong number of arguments for 'auth' command")
        return _err("ERR syntax error")

    # -- HELLO -------------------------------------------------------------------------------

    def _hello(self, argv: list[bytes]) -> bytes:
        proto = 3 if self.resp3 else 2
        i = 1
        if len(argv) > 1:
            try:
                proto = int(argv[1])
            except ValueError:
                return _err("ERR Protocol version is not an integer or out of range")
            if proto not in (2, 3):
                return b"-NOPROTO unsupported protocol version\r\n"
            i = 2
        setname: bytes | None = None
        auth: tuple[bytes, bytes] | None = None
        while i < len(argv):
            opt = argv[i].upper()
            more = len(argv) - i - 1
            if opt == b"AUTH" and more >= 2:
                auth = (argv[i + 1], argv[i + 2])
                i += 3
            elif opt == b"SETNAME" and more >= 1:
                setname = argv[i + 1]
                i += 2
            else:
                text = argv[i].decode("utf-8", "replace")
                return _err(f"ERR Syntax error in HELLO option '{text}'")
        if auth is not None:
            failed = self._check(*auth)
            if failed is not None:
                return failed
        if not self.authenticated:
            return _err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise "
                "the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the "
                "client and select the RESP protocol version at the same time"
            )
        if setname is not None:
            bad = self._bad_name(setname)
            if bad is not None:
                return bad
            self.name = setname or None
        self.resp3 = proto == 3
        fields: list[tuple[bytes, RespValue]] = [
            (b"server", b"redis"),
            (b"version", REDIS_VERSION.encode()),
            (b"proto", proto),
            (b"id", self.id),
            (b"mode", b"standalone"),
            (b"role", b"master"),  # every node takes writes (the primary orders them)
            (b"modules", []),
            (b"appliance", __version__.encode()),
        ]
        if self.resp3:
            return b"%%%d\r\n" % len(fields) + b"".join(
                encode(k) + encode(v, resp3=True) for k, v in fields
            )
        return encode([x for pair in fields for x in pair])

    # -- CLIENT ------------------------------------------------------------------------------

    @staticmethod
    def _bad_name(name: bytes) -> bytes | None:
        if any(b < 0x21 or b > 0x7E for b in name):
            return _err("ERR Client names cannot contain spaces, newlines or special characters.")
        return None

    def _client(self, argv: list[bytes]) -> bytes | None:
        sub = argv[1].upper()
        if sub == b"SETNAME" and len(argv) == 3:
            bad = self._bad_name(argv[2])
            if bad is not None:
                return bad
            self.name = argv[2] or None
            return _OK
        if sub == b"GETNAME" and len(argv) == 2:
            return encode(self.name, resp3=self.resp3)
        if sub == b"ID" and len(argv) == 2:
            return encode(self.id)
        if sub == b"SETINFO" and len(argv) == 4:
            attr = argv[2].upper()
            if attr not in (b"LIB-NAME", b"LIB-VER"):
                text = argv[2].decode("utf-8", "replace")
                return _err(f"ERR Unrecognized option '{text}'")
            self.lib[attr] = argv[3]
            return _OK
        return None  # the service answers the rest (and the arity errors) as Redis does
