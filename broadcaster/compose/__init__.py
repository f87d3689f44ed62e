"""Compose: turn a round, its incident update and a customer into the message they read."""
