"""VDF, the Virtual Determinizer Framework: make a replicated application virtually deterministic.

LLFT masks each source of non-determinism by recording, on the primary, the result of every
non-deterministic event as (thread id, operation id, operation counter, metadata), shipping those
records to the backups with the operation, and returning the same results in the same order there.
This package is the pure, sans-I/O half (no clock, no entropy, no threads: the host injects them);
:mod:`appliance.vdf_runtime` is the threaded runtime that applies it to real threads and, by
interposition, to unmodified modules.

The instances of the generic algorithm:

* **multithreading** - the order in which threads acquire each mutex (:attr:`Kind.LOCK`; the mutex
  is the operation identifier of this instance). Ordering is per mutex, so threads that never
  contend for the same mutex still run concurrently on the backups.
* **time** - clock reads (:attr:`Kind.TIME`).
* **randomness** - our addition (:attr:`Kind.RANDOM`).
* **socket communication** - which input arrives first. Across client connections this needs no
  records at all: the interleaving of inputs from different connections *is* the group's total
  order, decided by the primary and provided by LLMP ordering - every replica executes the
  ``Delivered`` events in log order, and the log index is the ``op_id`` of the records. What
  remains is an application that reads several inputs within one operation (say, a thread
  waiting on whichever of two queues fills first): :attr:`Kind.INPUT` records which input it
  consumed (:meth:`Determinizer.select_input`), so a backup consumes the same one.
"""

from __future__ import annotations

from appliance.protocols.vdf.determinizer import (
    MAX_RANDOM_BOUND,
    Determinizer,
    DivergenceError,
    Mode,
)
from appliance.protocols.vdf.records import (
    MAX_RECORDS,
    Kind,
    VdfRecord,
    decode_records,
    encode_records,
)

__all__ = [
    "MAX_RANDOM_BOUND",
    "MAX_RECORDS",
    "Determinizer",
    "DivergenceError",
    "Kind",
    "Mode",
    "VdfRecord",
    "decode_records",
    "encode_records",
]
