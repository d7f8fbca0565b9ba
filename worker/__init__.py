"""The worker side: `celery -A spotler_outbox.worker worker|flower` finds the app in
worker.celery.

What runs in production: celery (the app and its settings), tasks (thin Celery tasks),
dispatch/ (claim, send, decide, settle), spotler/ (the API client) and logs. console/ is the
operator's `spotler-outbox` command; fake_spotler/ is the fake API for tests and the demo.
"""
