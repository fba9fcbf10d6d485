"""SCIM servers written by others (Django apps), served for the interop tests.

``serve`` runs one of the Django projects below in a subprocess on 127.0.0.1 (SQLite in a
temporary directory, migrations at start, a bearer token, a request log); ``process`` is the
test side of it. Each server has a wrapper module that names its project and lists the quirks
observed against it: ``django_scim2`` (15five's django-scim2, stock adapters) and
``django_scim2_server`` (browniebroke's django-scim2-server, stock adapters).
"""
