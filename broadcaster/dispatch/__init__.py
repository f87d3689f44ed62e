"""Dispatch: claim deliveries under a lease, send them, record what happened."""
