"""The staff web console: server-rendered pages (Jinja2, autoescaped) under ``/console``.

It runs the same :mod:`broadcaster.operations` as the API, so every action is audited the
same way. Logins make a console session (cookie ``bc_session``: HttpOnly, SameSite=Strict,
Secure when the public URL is https); every form that changes something echoes the
session's CSRF token. Viewers read; operators declare, update, resolve, close and work the
follow-up queue; admins also reload the rules and read the audit log. Two small fragments
(the incident list and an incident's live state) are fetched again every few seconds by
``static/console.js``; the pages work without it.
"""

from __future__ import annotations

from broadcaster.web.console import incidents, login, work
from broadcaster.web.console.common import router
from broadcaster.web.console.incidents import chart

# The modules register their pages on the one router when imported.
__all__ = ["chart", "incidents", "login", "router", "work"]
