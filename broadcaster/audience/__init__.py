"""Audience: who an incident affects, read in keyset-paginated batches."""
