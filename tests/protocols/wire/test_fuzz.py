"""Seeded mutation fuzzing of the whole receive path: it must never raise, and counts add up."""

from __future__ import annotations

import random

from appliance.protocols.wire import (
    HMAC_LEN,
    DatagramFilter,
    MessageType,
    RejectReason,
    encode,
)

from ._support import CLUSTER, KEY, OTHER_KEY, datagram, sign

ROUNDS_PER_TYPE = 400


def resign_targets(n: int) -> range | list[int]:
    """Byte offsets a re-signed mutation may change.

    It skips the replay identity (src_node, incarnation, packet_number at 8..21): a datagram
    that is correctly signed yet lies about its sender needs the cluster key, which is outside
    the fault model, and letting it jump a node's incarnation would turn the rest of the run
    into nothing but STALE rejects. Those bytes are still fuzzed by the unsigned mutations.
    """
    return [*range(1, 8), *range(22, n)]


def mutate(rng: random.Random, wire: bytes) -> bytes:
    data = bytearray(wire)
    op = rng.randrange(9)
    if op == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del data[rng.randrange(len(data)) :]
    elif op == 2:  # extend
        data += rng.randbytes(rng.randint(1, 40))
    elif op == 3:  # random garbage of a plausible size
        data = bytearray(rng.randbytes(rng.randint(0, 1600)))
    elif op == 4:  # signed with the wrong key
        data = bytearray(encode(datagram(body=rng.randbytes(8)), OTHER_KEY))
    elif op == 5:  # exact duplicate (the network does this)
        pass
    else:  # re-signed mutation: gets past the HMAC and exercises the structural checks
        raw = data[:-HMAC_LEN]
        for _ in range(rng.randint(1, 3)):
            raw[rng.choice(resign_targets(len(raw)))] = rng.randrange(256)
        if op == 7 and len(raw) > 1:
            del raw[rng.randrange(1, len(raw)) :]
        if op == 8:
            raw += rng.randbytes(rng.randint(1, 30))
        data = bytearray(sign(bytes(raw)))
    return bytes(data)


def test_filter_never_raises_and_counts_add_up() -> None:
    rng = random.Random(20240601)
    f = DatagramFilter(KEY, CLUSTER, own_node=1)
    sent = 0
    packet_number = 0
    incarnation = {1: 7, 2: 7, 3: 7}
    for msg_type in MessageType:
        for _ in range(ROUNDS_PER_TYPE):
            packet_number += 1
            node = rng.choice([1, 2, 3])
            if rng.random() < 0.01:  # the node's agent restarted
                incarnation[node] += 1
            stale = rng.random() < 0.02  # a leftover from before the restart
            d = datagram(
                msg_type,
                n_records=rng.randint(0, 6),
                body=rng.randbytes(rng.randint(0, 200)),
                src_node=node,
                incarnation=incarnation[node] - stale,
                packet_number=packet_number,
            )
            wire = encode(d, KEY)
            result = f.accept(wire)
            sent += 1
            if d.header.src_node != 1 and result is not None:
                assert result == d
            for _ in range(3):
                f.accept(mutate(rng, wire))
                sent += 1
    rejected = f.rejected
    assert f.accepted + f.own + sum(rejected.values()) == sent
    assert all(n > 0 for n in rejected.values())
    # the fuzzer reached every reject path
    assert rejected.keys() == {r.value for r in RejectReason}
    assert f.last_error is not None and "decoder bug" not in f.last_error.detail
    assert f.accepted > ROUNDS_PER_TYPE * len(MessageType) // 2 and f.own > 0
