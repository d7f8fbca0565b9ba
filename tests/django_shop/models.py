from __future__ import annotations

from django.db import models


class Order(models.Model):
    email = models.CharField(max_length=200)
    sku = models.CharField(max_length=64)
    quantity = models.IntegerField()
    confirmed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_shop"
        db_table = "django_shop_orders"
