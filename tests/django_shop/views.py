"""The shop's checkout: the order and its Purchase event commit in one transaction."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from spotler_outbox import InvalidEvent
from spotler_outbox.django import enqueue_purchase
from tests.django_shop.models import Order


class PaymentDeclined(Exception):
    pass


def place_order(email: str, sku: str, quantity: int, *, using: str = "default",
                decline_payment: bool = False) -> Order:
    with transaction.atomic(using=using):
        order = Order.objects.using(using).create(email=email, sku=sku, quantity=quantity)
        enqueue_purchase({"event": "Purchase", "email": email, "orderid": f"DJ-{order.pk}",
                          "products": [{"id": sku, "quantity": quantity}]}, using=using)
        if decline_payment:  # after the enqueue: the whole order, outbox row too, rolls back
            raise PaymentDeclined(f"order {order.pk}")
    return order


def checkout(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    using = request.GET.get("db", "default")
    try:
        order = place_order(body["email"], body["sku"], body["quantity"], using=using,
                            decline_payment=body.get("decline", False))
    except InvalidEvent as e:
        return JsonResponse({"problems": e.problems}, status=400)
    except PaymentDeclined:
        return JsonResponse({"declined": True}, status=402)
    return JsonResponse({"order": order.pk}, status=201)
