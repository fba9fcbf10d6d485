"""A minimal Django project serving django-scim2-server (browniebroke) with its stock adapters
(``auth.User`` and ``auth.Group`` behind its own ``SCIMUser``/``SCIMGroup`` models) and its stock
access check (``is_superuser``: the bearer token's service account is one)."""

from __future__ import annotations

from tests.support.django_scim.base_settings import *  # noqa: F403

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_scim2_server",
]
ROOT_URLCONF = "tests.support.django_scim.scim2_server_project.urls"
TEST_RESET_MODELS = ["auth.User", "auth.Group"]
