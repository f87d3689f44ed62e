"""Forced human follow-up: tasks for named staff, reminders, escalation, outcomes."""
