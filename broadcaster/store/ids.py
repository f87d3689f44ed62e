"""Row ids are 64-bit integers: the largest a caller may name (anything larger is refused as
input, never sent to the store, where SQLite and PostgreSQL would overflow)."""

from __future__ import annotations

from typing import Final

MAX_ID: Final = 2**63 - 1
