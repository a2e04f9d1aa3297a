"""The connection commands the gateway answers itself: AUTH, HELLO, CLIENT, and RESP3 replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.node.client_session import NO_PASSWORD, NOAUTH, WRONGPASS, ClientSession
from appliance.service.resp import NULL_ARRAY, RespValue, decode_reply, encode, to_resp3


def cmd(text: str) -> list[bytes]:
    return [w.encode() for w in text.split()]


def test_without_requirepass_everything_is_forwarded() -> None:
    s = ClientSession(1, None)
    assert s.authenticated
    assert s.answer(cmd("SET k v")) is None
    assert s.answer(cmd("AUTH secret")) == NO_PASSWORD


def test_requirepass_gates_every_command_but_auth_hello_quit() -> None:
    s = ClientSession(1, "s3cret")
    assert s.answer(cmd("GET k")) == NOAUTH
    assert s.answer(cmd("CLIENT SETNAME x")) == NOAUTH
    assert s.answer(cmd("QUIT")) is None  # the gateway answers QUIT itself, first
    assert s.answer(cmd("AUTH wrong")) == WRONGPASS
    assert s.answer(cmd("AUTH someone s3cret")) == WRONGPASS
    assert not s.authenticated
    assert s.answer(cmd("AUTH default s3cret")) == b"+OK\r\n"
    assert s.answer(cmd("GET k")) is None


def test_auth_arity_errors_match_redis() -> None:
    s = ClientSession(1, "pw")
    assert s.answer(cmd("AUTH")) == b"-ERR wrong number of arguments for 'auth' command\r\n"
    assert s.answer(cmd("AUTH a b c")) == b"-ERR syntax error\r\n"


def test_hello_3_switches_to_resp3_and_reports_a_map() -> None:
    s = ClientSession(7, None)
    reply = s.answer(cmd("HELLO 3"))
    assert reply is not None and reply.startswith(b"%8\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in reply and b"$2\r\nid\r\n:7\r\n" in reply
    assert s.resp3
    assert s.shape(b"$-1\r\n") == b"_\r\n"
    assert s.shape(b"*2\r\n$1\r\na\r\n$-1\r\n") == b"*2\r\n$1\r\na\r\n_\r\n"
    back = s.answer(cmd("HELLO 2"))
    assert back is not None and back.startswith(b"*16\r\n")
    assert not s.resp3 and s.shape(b"$-1\r\n") == b"$-1\r\n"


def test_hello_errors() -> None:
    s = ClientSession(1, None)
    assert s.answer(cmd("HELLO 4")) == b"-NOPROTO unsupported protocol version\r\n"
    assert s.answer(cmd("HELLO x")) == (
        b"-ERR Protocol version is not an integer or out of range\r\n"
    )
    assert s.answer(cmd("HELLO 3 BOGUS")) == b"-ERR Syntax error in HELLO option 'BOGUS'\r\n"
    assert s.answer(cmd("HELLO 3 AUTH default")) == (
        b"-ERR Syntax error in HELLO option 'AUTH'\r\n"
    )
    assert not s.resp3  # a failed HELLO changes nothing


def test_hello_auth_authenticates_and_sets_the_name() -> None:
    s = ClientSession(1, "pw")
    refused = s.answer(cmd("HELLO 3"))
    assert refused is not None and refused.startswith(b"-NOAUTH HELLO must be called")
    assert s.answer(cmd("HELLO 3 AUTH default nope")) == WRONGPASS
    ok = s.answer(cmd("HELLO 3 AUTH default pw SETNAME app1"))
    assert ok is not None and ok.startswith(b"%")
    assert s.authenticated and s.resp3
    assert s.answer(cmd("CLIENT GETNAME")) == b"$4\r\napp1\r\n"


def test_client_connection_commands() -> None:
    s = ClientSession(42, None)
    assert s.answer(cmd("CLIENT GETNAME")) == b"$-1\r\n"
    assert s.answer(cmd("CLIENT SETNAME worker")) == b"+OK\r\n"
    assert s.answer(cmd("CLIENT GETNAME")) == b"$6\r\nworker\r\n"
    assert s.answer([b"CLIENT", b"SETNAME", b"two words"]) == (
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    )
    assert s.answer(cmd("CLIENT ID")) == b":42\r\n"
    assert s.answer(cmd("CLIENT SETINFO LIB-NAME redis-py")) == b"+OK\r\n"
    assert s.answer(cmd("CLIENT SETINFO COLOUR blue")) == b"-ERR Unrecognized option 'COLOUR'\r\n"
    assert s.answer(cmd("CLIENT LIST")) is None  # the service answers the rest
    assert s.answer(cmd("CLIENT")) is None


values: st.SearchStrategy[RespValue] = st.recursive(
    st.none() | st.just(NULL_ARRAY) | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_to_resp3_equals_encoding_in_resp3(value: RespValue) -> None:
    assert to_resp3(encode(value)) == encode(value, resp3=True)


@pytest.mark.parametrize("payload", [b"-1\r\n", b"$-1\r\n", b"x*-1\r\n"])
def test_to_resp3_leaves_bulk_data_that_looks_like_a_null(payload: bytes) -> None:
    reply = encode(payload)
    assert to_resp3(reply) == reply
    assert decode_reply(to_resp3(reply)) == payload
