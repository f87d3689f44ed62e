"""In-memory channel for tests: records what it was asked to send, fails on demand.

It is the official fake, like httpx's mock transport: tests of the daemon use it
instead of patching internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from channels.base import DeliveryError, Message, Receipt, Target


@dataclass
class SentMessage:
    target: Target
    message: Message


@dataclass
class MemoryChannel:
    """Keeps every accepted message in ``sent``; ``fail`` decides per call whether to raise."""

    name: str = "memory"
    contact: str = "email"
    sent: list[SentMessage] = field(default_factory=list)
    fail: Callable[[Target, Message], DeliveryError | None] | None = None
    attempts: int = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        self.attempts += 1
        if self.fail is not None:
            error = self.fail(target, message)
            if error is not None:
                raise error
        self.sent.append(SentMessage(target, message))
        return Receipt(provider_message_id=f"mem-{len(self.sent)}")

    async def aclose(self) -> None:
        return None
