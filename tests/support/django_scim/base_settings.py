"""Settings shared by the Django SCIM servers under test; ``serve`` sets the environment."""

from __future__ import annotations

import os

SECRET_KEY = "interop-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SCIM_TEST_DB"]}
}
MIDDLEWARE = ["tests.support.django_scim.auth.BearerTokenMiddleware"]
PORT = int(os.environ["SCIM_TEST_PORT"])
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}
