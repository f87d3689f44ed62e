"""Who may do what: roles, API tokens, console accounts and sessions, and the audit log."""
