"""`spotler-outbox forget --email ADDRESS`: erase one person's address from the outbox."""

from __future__ import annotations

import argparse

from spotler_outbox.models import erasure
from spotler_outbox.models.clock import utc_now
from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.console.format import confirm
from spotler_outbox.worker.console.outbox_commands import outbox
from spotler_outbox.worker.logs import mask_emails

OK, PROBLEMS = 0, 1


def describe(plan: erasure.ErasurePlan) -> list[str]:
    """What erasing will do, order by order (orderids shown, the address never)."""
    lines = []
    for action, matches in plan.orders.items():
        shown = ", ".join(m.orderid if not m.orderid_holds_address else mask_emails(m.orderid)
                          for m in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        lines.append(f"  {len(matches)} order(s) {action.value}: {shown}{more}")
    if plan.attempt_ids:
        lines.append(f"  {len(plan.attempt_ids)} delivery attempt(s): Spotler's answer replaced "
                     f"by {erasure.ERASED!r} (also for other orders sent in the same request)")
    if plan.pause_reason:
        lines.append("  the reason of the current pause quotes the address: replaced")
    return lines


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    needles = erasure.needles_for(args.email)
    who = "that SHA-256" if len(needles) == 1 else mask_emails(args.email.strip())
    with outbox(settings) as engine:
        with engine.connect() as conn:
            plan = erasure.find(conn, needles)
        if plan.empty:
            print(f"nothing in the outbox mentions {who} (nor its SHA-256)")
            return OK
        print(f"The outbox mentions {who} in:")
        for line in describe(plan):
            print(line)
        if plan.undelivered:
            print(f"{plan.undelivered} of these orders were not delivered yet: erased, they "
                  "will never be sent to Spotler.")
        if not confirm("Erase all of this? It cannot be undone.", args.yes):
            print("nothing changed")
            return PROBLEMS
        with engine.begin() as conn:
            done = erasure.erase(conn, plan, now=utc_now())
    print(f"erased: {done.emptied_delivered} delivered order(s) emptied (orderids kept), "
          f"{done.parked_or_emptied} undelivered or failed order(s) emptied and parked unsent, "
          f"{done.attempts} attempt excerpt(s) replaced")
    if plan.kept_keys:
        print(f"NOT erased: {len(plan.kept_keys)} orderid(s) hold the address themselves; an "
              "orderid is the outbox's key: delete those rows by hand if that is acceptable "
              "(enqueueing the order again would then send it again)")
        return PROBLEMS
    print("Spotler keeps its own copy of what was delivered: erase the profile there too.")
    return OK
