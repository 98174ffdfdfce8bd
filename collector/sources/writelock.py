"""One writer at a time on a SQLite record store shared by several processes (`serve --workers N`).

SQLite lets one connection write at a time; a second one waits in its busy handler, which polls
with sleeps of up to 100 ms, on the event loop of the worker that waits. An exclusive `flock` on a
file beside the store hands the store over as soon as the writer before is done (the kernel wakes
the next waiter), and is waited for in a thread, so the waiting worker keeps parsing requests:
they join its next group commit.
"""

import asyncio
import fcntl
import os
from pathlib import Path


class WriterLock:
    """An exclusive lock on `<store>-writer.lock`, taken around each group commit."""

    def __init__(self, store: str | Path) -> None:
        self.path = Path(f"{store}-writer.lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    async def acquire(self) -> None:
        """Take the lock: at once when it is free, else in a thread (the loop goes on serving)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
