"""Sans-I/O protocol core.

Everything here is a pure state machine: bytes and events in, bytes, events and deadlines
out, with the current time passed in as ``now``. Nothing in this package may import
socket, asyncio, threading, time or random (``tests/protocols/test_purity.py`` checks it),
which is what makes the deterministic simulator in :mod:`appliance.sim` possible.
"""
