"""``python -m broadcaster`` is the CLI."""

from __future__ import annotations

from broadcaster.cli.main import main

main()
