"""`spotler-outbox check`: ask Spotler whether the credentials work, optionally send one
real test purchase, and print Spotler's answers verbatim (e-mail addresses masked)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from spotler_outbox.models.accounts import account_keys, row_account
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.errors import ConfigurationError, InvalidEvent, UsageError
from spotler_outbox.models.settings import Settings
from spotler_outbox.models.validation import validate_purchase
from spotler_outbox.worker.logs import mask_emails
from spotler_outbox.worker.spotler.client import SpotlerClient
from spotler_outbox.worker.spotler.errors import DeliveryError

OK, PROBLEMS = 0, 1
AUDIENCE_CHECK = """\
To see it arrive: in Spotler Activate, open Audience > Profiles, search for the e-mail address
you gave with --email, open the profile and look for a Purchase event with orderid {orderid}
in its event history (it can take a minute to show).{hashed}"""


def _test_purchase(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if not args.email:
        raise UsageError("--send-test-purchase needs --email (a test profile's address)")
    product: dict[str, Any] = {"id": args.sku, "quantity": 1, "price": 0.0}
    if args.language:
        product["language"] = args.language
    event = {"event": "Purchase", "email": args.email, "products": [product],
             "orderid": f"spotler-outbox-check-{utc_now().strftime('%Y%m%dT%H%M%SZ')}",
             "currency": args.currency, "timestamp": int(utc_now().timestamp())}
    try:
        return validate_purchase(event, settings)
    except InvalidEvent as e:
        raise UsageError(mask_emails("; ".join(e.problems))) from e


def _answer(e: DeliveryError) -> str:
    if e.http_status is None:
        return f"no HTTP answer: {e}"
    return f"HTTP {e.http_status}: {mask_emails(e.excerpt) or '(empty body)'}"


def _client(args: argparse.Namespace, settings: Settings) -> SpotlerClient:
    """The default account's client, or that of --account (from SPOTLER_ACCOUNTS_FILE)."""
    account = getattr(args, "account", None)
    if account is None:
        return SpotlerClient(settings)
    credentials = account_keys(settings).credentials.get(row_account(account, settings))
    if credentials is None:
        raise ConfigurationError(f"account {account!r} has no credentials: add it to "
                                 "SPOTLER_ACCOUNTS_FILE")
    return SpotlerClient(settings, account=credentials[0], api_key=credentials[1])


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    event = _test_purchase(args, settings) if args.send_test_purchase else None
    client = _client(args, settings)
    try:
        print(f"Spotler API {client.base_url}, account {client.account}")
        try:
            accepted = client.verify_auth()
            print(f"verifyAuth: OK, Spotler answered HTTP {accepted.http_status}: "
                  f"{mask_emails(accepted.excerpt)}")
        except DeliveryError as e:
            print(f"verifyAuth: FAILED, Spotler answered {_answer(e)}")
            return PROBLEMS
        if event is None:
            return OK
        print("Sending one test purchase:\n" + mask_emails(json.dumps(event, indent=2)))
        try:
            accepted = client.track([event])
            print(f"track: Spotler answered HTTP {accepted.http_status}: "
                  f"{mask_emails(accepted.excerpt) or '(empty body)'}")
        except DeliveryError as e:
            print(f"track: FAILED, Spotler answered {_answer(e)}")
            return PROBLEMS
        hashed = ("\nSPOTLER_HASH_EMAIL is on: the profile holds the SHA-256 of the address."
                  if settings.hash_email else "")
        print(AUDIENCE_CHECK.format(orderid=event["orderid"], hashed=hashed))
        return OK
    finally:
        client.close()


