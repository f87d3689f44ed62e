"""Fault plans for the fake providers: answer the next requests with a chosen failure.

Every fake provider app consults its :class:`FaultPlan` before behaving normally, so one
shared retry table can drive every channel through the same statuses. A connection reset
cannot be produced from inside an ASGI app; :class:`ResettingServer` does that instead.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scripted:
    """One scripted answer. ``body=None`` means: the provider's own error body for ``status``."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    hang: float = 0.0
    """Seconds to wait before answering (longer than the client timeout = a timeout)."""


class FaultPlan:
    """A queue of scripted answers; empty means behave normally. Thread-safe."""

    def __init__(self) -> None:
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()

    def push(self, *answers: Scripted) -> None:
        with self._lock:
            self._queue.extend(answers)

    def next(self) -> Scripted | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()


class ResettingServer:
    """Accepts TCP connections and resets them at once (RST, via SO_LINGER 0)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ResettingServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.recv(1024)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
