"""A minimal Django project serving django-scim2 (15five) with its stock adapters.

The stock adapters need models with the library's SCIM mixins (``scim_id``, ``scim_username``,
``scim_groups``...): ``models`` declares the smallest such pair, as the library's own tests do.
"""

from __future__ import annotations

from tests.support.django_scim.base_settings import *  # noqa: F403
from tests.support.django_scim.base_settings import PORT

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_scim",
    "tests.support.django_scim.scim2_project",
]
AUTH_USER_MODEL = "scim2_project.User"
ROOT_URLCONF = "tests.support.django_scim.scim2_project.urls"
SCIM_SERVICE_PROVIDER = {
    "NETLOC": f"127.0.0.1:{PORT}",
    "SCHEME": "http",
    "GROUP_MODEL": "tests.support.django_scim.scim2_project.models.Group",
    "AUTHENTICATION_SCHEMES": [
        {
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "Authentication with a bearer token",
        }
    ],
    "WWW_AUTHENTICATE_HEADER": 'Bearer realm="django-scim2"',
}
TEST_RESET_MODELS = ["scim2_project.User", "scim2_project.Group"]
