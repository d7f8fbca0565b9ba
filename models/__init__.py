"""The outbox tables, the SQL on them, and the order system's enqueue API."""
