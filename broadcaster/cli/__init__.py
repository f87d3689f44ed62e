"""The ``broadcaster`` command line (Typer)."""
