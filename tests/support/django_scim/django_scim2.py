"""django-scim2 (15five, PyPI ``django-scim2`` 0.23) with its stock adapters, for the interop tests.

Project: ``scim2_project`` (the smallest models the stock adapters accept: a user model with
``AbstractSCIMUserMixin`` and ``AbstractUser``, a group model with ``AbstractSCIMGroupMixin``, as
in the library's own tests). Base URL ``http://127.0.0.1:<port>/scim/v2``. The library does no
authentication: ``auth.BearerTokenMiddleware`` sets ``request.user``, and the library's
``SCIMAuthCheckMiddleware`` answers 401 to the anonymous.

Quirks observed (Django 5.2, SQLite; "→" is the answer):

- ServiceProviderConfig says ``patch.supported: true``, ``filter.supported: false``
  (``maxResults`` 50), ``changePassword.supported: true``, ``documentationUri: null``; the
  ``authenticationSchemes`` are whatever the settings say. With the generic profile the
  product therefore looks nothing up before creating (it relies on 409s).
- 401: empty body, ``WWW-Authenticate`` from the ``WWW_AUTHENTICATE_HEADER`` setting (default
  ``Basic realm="django-scim2"``; set to Bearer here).
- Ids are the database's integers as strings (``"1"``); users and groups share the numbers.
- Errors are SCIM Errors with ``status`` as a number (``"status": 409``), no ``scimType``;
  unknown id → 404 ``{"detail": "Resource 9 not found"}``.
- Filters: Users filter on ``userName``, ``name.givenName``, ``name.familyName``, ``active``
  (``userName eq "U1@example.com"`` finds ``u1@example.com``: case-insensitive); any other
  attribute (``externalId``, ``emails.value``) → 200 with no resource. Groups have no filterable
  attribute: ``GET /Groups?filter=displayName eq "eng"`` → 200, ``totalResults: 0`` although
  ``eng`` exists. The product then cannot find a group it gets a 409 for (takeover fails).
- POST, PUT and PATCH answer with the whole resource (201/200).
- POST /Users: the enterprise extension is dropped silently (201 without it); ``displayName``
  is ignored (it is always computed: "first last", else the userName); ``emails`` come back
  without ``type``; absent values come back as ``""``: ``"name": {"givenName": "",
  "familyName": ""}``, ``"externalId": ""``, ``"emails": [{"value": "", "primary": true}]``.
  The product reads those as values it must clear, and sends
  ``PATCH /Users/1 [{"op": "remove", "path": "name.givenName"}, {"op": "remove", "path":
  "name.familyName"}, {"op": "remove", "path": "displayName"}, {"op": "remove", "path":
  "externalId"}]`` → 501 ``{"detail": "", "status": 501}``, then a PUT (once PUT is learned, a POST and a PUT per new user).
- PATCH /Users: ``replace`` works for ``userName``, ``name.givenName``, ``name.familyName``,
  ``active`` (a bool, else 400) and ``emails`` (a list); ``replace`` of ``displayName``,
  ``externalId``, ``emails[type eq "work"].value`` or
  ``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`` → 501
  ``{"detail": "Not Implemented", "status": 501}``; every ``remove`` → 501 (empty detail);
  one unsupported operation fails the whole PATCH (atomic). The PatchOp schema is not checked.
- PUT /Users: sets userName, name, emails (when given), active (when given), externalId (``""``
  when absent); drops the extension and displayName silently. 200.
- DELETE /Users/{id}: a real deletion (204, then 404); the user leaves its groups with it.
- POST /Groups: ``members`` is ignored (201 with ``"members": []``); a second group of the same
  displayName → 409 ``{"detail": "UNIQUE constraint failed: scim2_project_group.name"}``.
- PUT /Groups: renames; ``members`` is ignored (the members stay as they were).
- PATCH /Groups: ``add`` with ``path: "members"`` and a value list works (ids must be integers:
  ``"abc"`` → 500 ``Exception occurred while processing the SCIM request``; an unknown
  integer → 400 ``Can not add a non-existent user to group``). ``remove`` works only as
  ``{"op": "remove", "path": "members", "value": [{"value": "2"}]}``; the RFC 7644 form
  ``{"op": "remove", "path": "members[value eq \\"2\\"]"}`` → 501 (empty detail), and removing a
  user that is no longer there (deleted) → 400 ``Can not remove a non-existent user from group``.
  ``replace`` of ``displayName`` → 501; only the non-standard ``{"op": "replace", "path":
  "name", "value": [{"value": "new"}]}`` renames.
- Paging: ``count`` defaults to 50 and is not capped; ``startIndex`` is honoured.
- The library says it supports only PostgreSQL; every request the product sends works on
  SQLite (the filters it sends become simple ``WHERE`` clauses).
"""

from __future__ import annotations

from tests.support.django_scim.process import DjangoScimServer


class DjangoScim2(DjangoScimServer):
    name = "django-scim2"
    settings_module = "tests.support.django_scim.scim2_project.settings"
