"""What of a write the application's copy of the resource does not show.

A single call's answer shows what the app kept of a write (members ignored on create, an
attribute never stored). An answer to a Bulk request may leave out the resource of an operation
that succeeded (RFC 7644 §3.7.3: its ``response`` is optional, and scim2-server sends none);
then the pool reads the resource back, and ``not_held`` compares it with the write.

Values are checked for presence, not equality: an app may store a value in its own form (the
case of an email, a formatted name). Booleans and member ids are compared exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

NOT_COMPARED = frozenset({"schemas", "meta", "id", "password"})
_MEMBER_FILTER = re.compile(r'^members\[value eq ("(?:[^"\\]|\\.)*")\]$')


def not_held(method: str, sent: Mapping[str, Any], read: Mapping[str, Any]) -> list[str]:
    """The attributes of ``sent`` (a POST's or PUT's resource, a PATCH's PatchOp) that ``read``
    (the resource read back after the write) does not hold as sent; [] when it holds them all.
    """
    if method == "PATCH":
        found = _patch_not_held(sent.get("Operations") or [], read)
    else:
        found = _missing(sent, read, "")
    return sorted(set(found))


def _missing(sent: Any, read: Any, path: str) -> Iterator[str]:
    if isinstance(sent, dict):
        held = _lower_keys(read)
        for key, value in sent.items():
            if key in NOT_COMPARED or _empty(value):
                continue
            # an extension's attributes are named on their own: ``department``
            inner = path if key.startswith("urn:") else f"{path}.{key}" if path else key
            yield from _missing(value, held.get(key.lower()), inner)
    elif isinstance(sent, list):
        if sent and all(isinstance(item, dict) and "value" in item for item in sent):
            if not _values(sent) <= _values(read):
                yield path
        elif _empty(read):
            yield path
    elif isinstance(sent, bool):
        if read is not sent:
            yield path
    elif _empty(read):
        yield path


def _patch_not_held(operations: list[Any], read: Mapping[str, Any]) -> Iterator[str]:
    members = _values(read.get("members"))
    for operation in operations:
        if not isinstance(operation, dict):
            continue
        op = str(operation.get("op") or "").lower()
        path = str(operation.get("path") or "")
        value = operation.get("value")
        if path == "members":
            sent = _values(value)
            if (op == "add" and not sent <= members) or (op == "remove" and sent & members):
                yield "members"
        elif match := _MEMBER_FILTER.match(path):
            if op == "remove" and _norm(json.loads(match.group(1))) in members:
                yield "members"
        elif op in ("add", "replace"):
            yield from _missing(value, _at(read, path), path.rsplit(":", 1)[-1])
        elif op == "remove" and not _empty(_at(read, path)):
            yield path.rsplit(":", 1)[-1]


def _at(resource: Mapping[str, Any], path: str) -> Any:
    """The value at a PATCH path: ``active``, ``name.givenName``, or an extension's
    ``urn:...:User:department``."""
    if path.startswith("urn:"):
        extension, _, attribute = path.rpartition(":")
        return _lower_keys(_lower_keys(resource).get(extension.lower())).get(attribute.lower())
    value: Any = resource
    for part in path.split("."):
        value = _lower_keys(value).get(part.lower())
    return value


def _values(items: Any) -> set[str]:
    """The ``value`` of each item of a multi-valued attribute (members, emails)."""
    if not isinstance(items, list):
        return set()
    return {_norm(item.get("value")) for item in items if isinstance(item, dict)}


def _norm(value: Any) -> str:
    return str(value).lower()


def _lower_keys(value: Any) -> dict[str, Any]:
    """Attribute names are case-insensitive (RFC 7643 §2.1)."""
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


__all__ = ["not_held"]
