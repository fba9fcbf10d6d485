"""The work queue: publishing events, Celery's messages, the reconcile queue and the sweeper."""
