"""Incidents: their lifecycle and the operations staff perform on them."""
