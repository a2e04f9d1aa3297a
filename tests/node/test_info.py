"""INFO through a node: the primary's data sections, the asking node's replication section."""

from __future__ import annotations

from appliance.node.info import wants_replication, with_local_replication
from appliance.service.resp import decode_reply, encode

PRIMARY_INFO = (
    b"# Server\r\nredis_version:7.0.0\r\n\r\n"
    b"# Replication\r\nrole:master\r\nnode:1\r\n\r\n"
    b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n"
)


def test_replication_section_is_the_local_nodes() -> None:
    out = decode_reply(with_local_replication(encode(PRIMARY_INFO), {"role": "slave", "node": "2"}))
    assert out == (
        b"# Server\r\nredis_version:7.0.0\r\n\r\n"
        b"# Replication\r\nrole:slave\r\nnode:2\r\n\r\n"
        b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n"
    )


def test_last_or_only_section() -> None:
    only = encode(b"# Replication\r\nrole:master\r\n")
    assert decode_reply(with_local_replication(only, {"role": "slave"})) == (
        b"# Replication\r\nrole:slave\r\n"
    )


def test_other_replies_pass_through() -> None:
    for reply in (b"-ERR nope\r\n", encode(b"# Server\r\nx:1\r\n"), b"garbage"):
        assert with_local_replication(reply, {"role": "slave"}) == reply


def test_which_info_commands_hold_the_section() -> None:
    assert wants_replication([b"INFO"])
    assert wants_replication([b"info", b"Replication"])
    assert wants_replication([b"INFO", b"server", b"all"])
    assert not wants_replication([b"INFO", b"keyspace"])
