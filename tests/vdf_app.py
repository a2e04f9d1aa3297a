"""A small multithreaded application that knows nothing about the VDF.

It uses the ordinary ``time``, ``random`` and ``threading`` modules the ordinary way. The runtime
tests make it deterministic from the outside with :func:`appliance.vdf_runtime.interpose`; this
file must stay free of any VDF import.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time


class Journal:
    """Workers append stamped, randomised entries to a shared journal under two locks."""

    def __init__(self) -> None:
        self._entries_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.entries: list[tuple[str, int, float, int, float, int]] = []
        self.score = 0.0
        self.started_ns = 0

    def _worker(self, name: str, steps: int) -> None:
        for i in range(steps):
            time.sleep(0)
            with self._entries_lock:
                stamp = time.time()
                roll = random.randint(1, 6)
                self.entries.append((name, i, stamp, roll, random.random(), len(self.entries)))
            time.sleep(0)
            with self._stats_lock:
                self.score = self.score * 0.5 + random.random() + time.monotonic() % 1.0

    def run(self, workers: int = 3, steps: int = 10) -> None:
        self.started_ns = time.time_ns()
        threads = [
            threading.Thread(target=self._worker, args=(f"w{n}", steps)) for n in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)

    def digest(self) -> str:
        state = repr((self.started_ns, self.entries, self.score)).encode()
        return hashlib.sha256(state).hexdigest()
