"""Hypothesis fuzzing of the parsers not covered by tests/unit/test_intake_fuzz.py."""
