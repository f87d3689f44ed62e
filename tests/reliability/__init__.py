"""Fault injection: providers, SMTP, PostgreSQL, SIGKILL and disks failing mid-run."""
