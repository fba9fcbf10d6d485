"""The smallest bearer-token authentication for the Django SCIM servers under test.

Neither library authenticates by itself (both leave it to Django): this middleware makes
``request.user`` a service account when ``Authorization`` is ``Bearer <SCIM_TEST_TOKEN>`` and
an anonymous user otherwise; the libraries' own checks then answer 401 to the anonymous.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse


class ServiceAccount:
    """The provisioning client: authenticated, allowed everything, stored nowhere (so that it
    never shows up among the server's SCIM users)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = True
    is_superuser = True
    pk = None
    username = "scim-client"


SERVICE_ACCOUNT = ServiceAccount()


def token_matches(authorization: str) -> bool:
    """``authorization`` (the header's value) carries the test token."""
    expected = f"Bearer {os.environ['SCIM_TEST_TOKEN']}"
    return hmac.compare_digest(authorization.encode(), expected.encode())


class BearerTokenMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        authorization = request.META.get("HTTP_AUTHORIZATION", "")
        user = SERVICE_ACCOUNT if token_matches(authorization) else AnonymousUser()
        request.user = user  # type: ignore[assignment]
        return self.get_response(request)
