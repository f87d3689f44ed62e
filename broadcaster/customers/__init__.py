"""Customers: the people incidents are broadcast to, and how they get into the store.

``rows`` turns one CSV record or JSON line into a validated :class:`CustomerRow` (pure, no I/O);
``importer`` streams a file through it and writes accepted rows in batches.
"""

from __future__ import annotations

from broadcaster.customers.importer import (
    ImportInputError,
    ImportResult,
    RowWarning,
    detect_format,
    import_customers,
)
from broadcaster.customers.rows import CSV_COLUMNS, CustomerRow, Problem, RowError, RowRejected

__all__ = [
    "CSV_COLUMNS",
    "CustomerRow",
    "ImportInputError",
    "ImportResult",
    "Problem",
    "RowError",
    "RowRejected",
    "RowWarning",
    "detect_format",
    "import_customers",
]
