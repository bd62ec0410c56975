import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from ratewall.http import Header
from ratewall.integrations.django import rate_limit

# This example's own variable (its tests set it): ratewall itself reads no environment.
STORE = os.environ.get("RATEWALL_STORE", "redis://127.0.0.1:6379/0")
RATEWALL = {"policies": {"login": {"limit": 5, "window": "1m"}}, "store": STORE, "timeout": 0.5}
settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["127.0.0.1"], RATEWALL=RATEWALL)


@rate_limit("login", identity=Header("X-User-ID"))
def login(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("login", login)]
application = get_wsgi_application()
