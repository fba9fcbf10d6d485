"""What the pool has learned about one application by talking to it (trust but verify).

Knowledge kept per app in the Redis hash ``keys.app_learned(app)``:

- ``form:<operation>`` -> the request form that works for that operation (see
  ``worker.scim.compat``), learned when the profile's form was answered 501 Not Implemented
  or 400 ``invalidPath``/``noTarget``/``invalidSyntax``;
- ``unsupported:<attribute>`` -> why: a user attribute the app accepts but never stores
  (a create or update answered without it). It is not sent again and is never drift;
- ``bulk`` -> why: the app announced Bulk but refused a Bulk request (501, 400, 413...): its
  writes are sent one by one (``worker.scim.bulk``);
- ``bulk_held:<form>`` -> what was read back: a write of that form (``POST /Groups``) sent in a
  Bulk request, read back, was held as sent; writes of that form are no longer read back
  (``worker.scim.held``).

``apps update`` (and re-activation) forget all of it, so a fixed application is tried again.
Each field is written with one ``HSET``: workers that learn at once never lose each other's
knowledge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.store import keys

FORM = "form:"
UNSUPPORTED = "unsupported:"
BULK = "bulk"
BULK_HELD = "bulk_held:"


@dataclass(frozen=True)
class Learned:
    forms: Mapping[str, str] = field(default_factory=dict)
    """operation -> the form that worked (only where it differs from the profile's first)"""
    unsupported_attributes: Mapping[str, str] = field(default_factory=dict)
    """user attribute -> why it is deemed unsupported"""
    bulk_refused: str | None = None
    """why the app's writes are not sent in Bulk requests (it refused one), or None"""
    bulk_held: frozenset[str] = frozenset()
    """the forms of write (``POST /Users``) the app was seen to hold as sent in Bulk requests"""

    def as_json(self) -> dict[str, object]:
        """``bulk_refused`` and ``bulk_held`` only when there is something to say."""
        shown: dict[str, object] = {
            "forms": dict(sorted(self.forms.items())),
            "unsupported_attributes": sorted(self.unsupported_attributes),
        }
        if self.bulk_refused:
            shown["bulk_refused"] = self.bulk_refused
        if self.bulk_held:
            shown["bulk_held"] = sorted(self.bulk_held)
        return shown

    def __bool__(self) -> bool:
        return bool(self.forms or self.unsupported_attributes or self.bulk_refused
                    or self.bulk_held)  # fmt: skip


def parse(raw: Mapping[Any, bytes | str]) -> Learned:
    """A ``Learned`` from the hash as ``HGETALL`` returns it."""
    forms: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    bulk_refused = None
    held: set[str] = set()
    for name, value in raw.items():
        name = name.decode() if isinstance(name, bytes) else name
        value = value.decode() if isinstance(value, bytes) else value
        if name.startswith(FORM):
            forms[name[len(FORM) :]] = value
        elif name.startswith(UNSUPPORTED):
            unsupported[name[len(UNSUPPORTED) :]] = value
        elif name == BULK:
            bulk_refused = value
        elif name.startswith(BULK_HELD):
            held.add(name[len(BULK_HELD) :])
    return Learned(forms, unsupported, bulk_refused, frozenset(held))


def load(client: redis.Redis, app_id: str) -> Learned:
    return parse(client.hgetall(keys.app_learned(app_id)))


def learn_form(client: redis.Redis, app_id: str, operation: str, form: str) -> None:
    client.hset(keys.app_learned(app_id), FORM + operation, form)


def learn_unsupported(client: redis.Redis, app_id: str, attribute: str, why: str) -> bool:
    """Record an attribute the app does not store; True when this is news."""
    return bool(client.hsetnx(keys.app_learned(app_id), UNSUPPORTED + attribute, why))


def learn_bulk_refused(client: redis.Redis, app_id: str, why: str) -> bool:
    """Record that the app refuses Bulk requests; True when this is news."""
    return bool(client.hsetnx(keys.app_learned(app_id), BULK, why))


def learn_bulk_held(client: redis.Redis, app_id: str, form: str, what: str) -> bool:
    """Record that the app holds Bulk writes of ``form`` as sent; True when this is news."""
    return bool(client.hsetnx(keys.app_learned(app_id), BULK_HELD + form, what))


def reset(client: redis.Redis | redis.client.Pipeline, app_id: str) -> None:
    client.delete(keys.app_learned(app_id))
