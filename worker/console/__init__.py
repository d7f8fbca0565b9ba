"""The operator's console: the spotler-outbox command, the importer, the Prometheus exporter
and the demo. Nothing here runs inside a Celery worker."""
