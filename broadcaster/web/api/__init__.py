"""The HTTP API (``/api/v1``): incidents, customers, deliveries, follow-ups, rules, audit.

Every route names the role it needs (``broadcaster.web.auth.require``); errors are JSON
with the offending field (``broadcaster.web.errors``); lists page by keyset (``cursor``).
"""
