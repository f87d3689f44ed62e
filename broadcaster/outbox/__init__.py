"""Outbox: one delivery row per (round, customer, channel), written idempotently."""
