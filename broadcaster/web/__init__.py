"""The daemon's HTTP server: provider callbacks, inbound messages, public links, health."""
