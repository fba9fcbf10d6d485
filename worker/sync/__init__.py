"""Keeping an app in step: the rules, the plan, the reconcile of one key, and the runs around it (dry run, explain, verify, rate limits, the deletion guard)."""
