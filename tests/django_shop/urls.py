from django.urls import path

from tests.django_shop.views import checkout

urlpatterns = [path("checkout", checkout)]
