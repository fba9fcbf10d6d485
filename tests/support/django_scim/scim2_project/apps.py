from __future__ import annotations

from django.apps import AppConfig


class Scim2ProjectConfig(AppConfig):
    name = "tests.support.django_scim.scim2_project"
    label = "scim2_project"
