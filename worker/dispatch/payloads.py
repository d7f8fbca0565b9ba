"""Which claimed rows can be sent: a pure check of what arrived in the table, by any route.

Rows written by plain SQL (PHP, psql) were never validated; a row that cannot be sent is
parked with its reason, so one bad row never stalls the others. A row enqueue_purchase wrote
was validated in the order's transaction and stored as canonical JSON: it is sent as stored,
without parsing it again (a quarter of the worker's CPU per event went into re-validating).
"""

from __future__ import annotations

import json
import logging

from spotler_outbox.models.claims import ClaimedRow
from spotler_outbox.models.errors import InvalidEvent
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.validation import canonical_json, validate_purchase

log = logging.getLogger("spotler_outbox.dispatch")


def unsendable_reason(row: ClaimedRow, settings: Settings) -> tuple[str | None, str]:
    """(None, the event's JSON to send) for a row that can be sent, else (the reason, "")."""
    if row.attempts > settings.max_attempts:
        return (f"gave up: claimed {row.attempts - 1} times without an answer being recorded "
                "(worker crashes?)"), ""
    if row.validated:
        return None, row.payload
    try:
        payload = json.loads(row.payload)
    except ValueError as e:
        return f"payload: not valid JSON ({e})", ""
    except RecursionError:
        return "payload: JSON nested too deeply to read", ""
    try:
        event = validate_purchase(payload, settings)
    except InvalidEvent as e:
        return str(e), ""
    except Exception as e:  # a validator bug must park one row, not stall the batch
        log.exception("validating orderid %s failed unexpectedly", row.orderid)
        return f"payload: could not be validated ({type(e).__name__})", ""
    if event["orderid"] != row.orderid:
        return (f"orderid: the payload says {event['orderid']!r} but the row's orderid "
                f"column says {row.orderid!r}"), ""
    return None, canonical_json(event)
