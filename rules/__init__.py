"""Rules: the escalation rule language (schema, loader, pure evaluation). No I/O, no import of
``broadcaster``. The foundation ships only the package; the rule engine builds on it."""
