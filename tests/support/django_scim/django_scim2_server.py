"""django-scim2-server (browniebroke, PyPI ``django-scim2-server`` 1.1) with its stock adapters,
for the interop tests.

An implementation of its own (its own PATCH engine and filter parser; scim2-models only
serializes), unrelated to scim2-server's code. Project: ``scim2_server_project``: ``auth.User``
and ``auth.Group`` behind the library's ``SCIMUser``/``SCIMGroup`` models, and its stock access
check (``is_superuser``; ``auth.BearerTokenMiddleware`` makes the bearer token's client one).
Base URL ``http://127.0.0.1:<port>/scim/v2``.

Quirks observed (Django 5.2, SQLite; "→" is the answer):

- ServiceProviderConfig says ``patch.supported: true``, ``filter.supported: true``
  (``maxResults`` 200), ``changePassword``, ``sort``, ``etag`` and ``bulk`` unsupported, scheme
  ``oauthbearertoken``; what it claims works, but see the extension below.
- 401: SCIM Error ``{"status": "401", "detail": "Authentication required"}``, no
  ``WWW-Authenticate`` header.
- Ids are UUIDs. The URL patterns take only UUIDs: ``GET /Users/nonexistent`` → Django's HTML
  404 page, not a SCIM Error (a well-formed unknown UUID gets a SCIM 404).
- Errors are SCIM Errors with ``status`` as a string (``"409"``) and ``scimType``
  ``uniqueness`` on 409; a database error is an HTML 500 page.
- Filters: Users on ``userName``, ``name.givenName``, ``name.familyName``, ``emails.value``,
  ``active``, ``externalId``; Groups on ``displayName``, ``externalId``; ``eq`` is
  case-insensitive (``userName eq "U1@example.com"`` finds ``u1@example.com``).
- POST, PUT and PATCH answer with the whole resource (201/200). Answers carry no
  ``displayName`` for users (never stored), ``emails`` without ``type``, no ``emails`` when
  there is none, ``name`` with ``""`` for absent parts, no ``externalId`` when empty.
- The enterprise extension is refused on POST and PUT /Users:
  ``POST /Users {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
  "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"], "userName": "u1@example.com",
  "active": true, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
  {"department": "Eng"}}`` → 400 ``{"status": "400", "detail": "1 validation error for
  User\\n`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`\\n  Extra inputs are not
  permitted [type=extra_forbidden] ..."}`` (no ``scimType``). A user with a department is
  therefore never created until the product stops sending it.
- PATCH /Users ignores what it does not know, silently: ``replace`` of
  ``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`` or ``displayName``
  → 200, nothing stored. A PATCH without the PatchOp schema → 400 ``PatchOp schema required``.
- DELETE /Users/{id} → 204 but only deactivates: the user stays, ``active: false``, listed and
  readable (so ``--user-delete-policy delete`` leaves a deactivated account).
- POST /Groups honours ``members``; a second group of the same displayName → HTML 500 (the
  unique ``auth_group.name``), never 409: a create that races a lookup is retried as transient.
- PATCH /Groups: ``add``/``replace``/``remove`` of ``members`` with a value list, ``remove``
  with ``members[value eq "<uuid>"]`` (only that filter), ``replace`` of ``displayName`` all
  work; removing a member that is not there is a no-op; a non-UUID member value → HTML 500.
  PUT /Groups replaces name and members.
- Paging: ``count`` defaults to 100; over 1000 → 400 ``count must be <= 1000``.
"""

from __future__ import annotations

from tests.support.django_scim.process import DjangoScimServer


class DjangoScim2Server(DjangoScimServer):
    name = "django-scim2-server"
    settings_module = "tests.support.django_scim.scim2_server_project.settings"
