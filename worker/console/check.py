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

OK, PROBLEMS, USAGE = 0, 1, 2
AUDIENCE_CHECK = """\
To confirm it in Spotler Activate (it can take a few minutes to show):
  1. Audiences: make an audience with the condition "Api inserted / api verified", as
     Spotler's help page describes; the test profile ({email}) should be in it.
  2. Audience > Profiles: search for that address, open the profile and find the Purchase
     event with orderid {orderid} in its event history.{hashed}"""


def _test_purchase(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if not args.email:
        raise UsageError("--send-test-purchase needs --email (a test profile's address)")
    product: dict[str, Any] = {"id": args.sku, "quantity": 1, "price": 0.0}
    if args.language:
        product["language"] = args.language
    # No timestamp (Spotler takes the time of arrival), so that the event printed by a run
    # without --yes is exactly the one a run with --yes and the same --orderid sends.
    orderid = args.orderid or f"spotler-outbox-check-{utc_now().strftime('%Y%m%dT%H%M%SZ')}"
    event = {"event": "Purchase", "email": args.email, "orderid": orderid,
             "products": [product], "currency": args.currency}
    try:
        return validate_purchase(event, settings)
    except InvalidEvent as e:
        raise UsageError(mask_emails("; ".join(e.problems))) from e


def _answer(e: DeliveryError) -> str:
    """What came back, or that nothing did: the request never reached Spotler's HTTP."""
    if e.http_status is None:
        return f"no HTTP answer from Spotler: {e}"
    return f"Spotler answered HTTP {e.http_status}: {mask_emails(e.excerpt) or '(empty body)'}"


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


def _show_request(client: SpotlerClient, event: dict[str, Any], *, sending: bool) -> None:
    verb = "Sending" if sending else "Would send"
    print(f"{verb} one real Purchase to POST {client.base_url}/v1/track, this body (the e-mail "
          "address masked here, sent as given):")
    print(mask_emails(json.dumps({"events": [event]}, indent=2, ensure_ascii=False)))


def _refuse_without_yes(args: argparse.Namespace, orderid: str) -> int:
    language = f" --language {args.language}" if args.language else ""
    print("Nothing sent: this is a real purchase in a live account, so it needs --yes. To send "
          "exactly this, run:\n"
          f"  spotler-outbox check --send-test-purchase --email ADDRESS --sku {args.sku} "
          f"--currency {args.currency}{language} --orderid {orderid} --yes")
    return USAGE


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
            print(f"verifyAuth: FAILED, {_answer(e)}")
            return PROBLEMS
        if event is None:
            return OK
        _show_request(client, event, sending=args.yes)
        if not args.yes:
            return _refuse_without_yes(args, event["orderid"])
        try:
            accepted = client.track([event])
            print(f"track: Spotler answered HTTP {accepted.http_status}: "
                  f"{mask_emails(accepted.excerpt) or '(empty body)'}")
        except DeliveryError as e:
            print(f"track: FAILED, {_answer(e)}")
            return PROBLEMS
        hashed = ("\nSPOTLER_HASH_EMAIL is on: the profile holds the SHA-256 of the address."
                  if settings.hash_email else "")
        print(AUDIENCE_CHECK.format(email=mask_emails(args.email), orderid=event["orderid"],
                                    hashed=hashed))
        return OK
    finally:
        client.close()
