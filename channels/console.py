"""Console channel: writes each message as one JSON line to stdout or a file (a local sink)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict

from channels.base import Message, Receipt, Target


class ConsoleSettings(BaseModel):
    """Settings of the console channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["console"] = "console"
    contact: str = "email"
    path: Path | None = None
    """Append JSON lines to this file; standard output when unset."""


class ConsoleChannel:
    """Prints messages; never fails except on a broken stream."""

    def __init__(self, name: str, settings: ConsoleSettings, stream: TextIO | None = None) -> None:
        self.name = name
        self.contact = settings.contact
        self._path = settings.path
        self._stream = stream
        self._lock = asyncio.Lock()
        self._count = 0

    async def send(self, target: Target, message: Message) -> Receipt:
        line = json.dumps(
            {
                "channel": self.name,
                "to": target.address,
                "name": target.name,
                "customer": target.customer_id,
                "subject": message.subject,
                "text": message.text,
                "key": message.idempotency_key,
            },
            ensure_ascii=False,
        )
        async with self._lock:
            self._count += 1
            if self._path is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            else:
                out = self._stream or sys.stdout
                out.write(line + "\n")
                out.flush()
        return Receipt(provider_message_id=f"console-{message.idempotency_key or self._count}")

    async def aclose(self) -> None:
        return None
