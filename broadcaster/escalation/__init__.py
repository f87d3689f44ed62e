"""Escalation: the rules file in the daemon, the facts it is fed, the plan it snapshots."""
