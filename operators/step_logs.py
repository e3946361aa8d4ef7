"""Step logs kept in the store while a step runs, so they outlive its process (or pod) and can be followed."""

from __future__ import annotations

import threading
import time

from trainyard.store.versioned import Store

# A log is rewritten whole on each flush; beyond this size only the end is kept (the head says so).
MAX_LOG_BYTES = 16 * 2**20


class StoreLogWriter:
    """Collect a step's output lines and write them to `key` every `interval` seconds and when closed."""

    def __init__(self, store: Store, key: str, interval: float = 2.0) -> None:
        self.store, self.key, self.interval = store, key, interval
        self._lines: list[str] = []
        self._size = 0
        self._dropped = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            while self._size > MAX_LOG_BYTES and len(self._lines) > 1:
                self._size -= len(self._lines.pop(0))
                self._dropped += 1
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            head = f"[{self._dropped} earlier line(s) dropped: the log is capped]\n" if self._dropped else ""
            data = (head + "".join(self._lines)).encode()
            self._last = time.monotonic()
        self.store.backend.write(self.key, data)

    def close(self) -> None:
        self.flush()
