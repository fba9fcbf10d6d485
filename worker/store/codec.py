"""Redis replies as the project reads them.

The project's clients never set ``decode_responses``: every reply holds ``bytes``. redis-py
types its replies for either setting (``bytes | str``), and some more widely than a command
answers (``XRANGE`` and ``ZRANGE``); these helpers take such a reply and give the project's
view of it, at one place. Imports nothing of the project (the store modules import it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

StreamEntry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields) of an XRANGE/XREVRANGE
ZSetRange = list[bytes | str] | list[tuple[bytes | str, Any]] | list[list[Any]]


def text(raw: bytes | str) -> str:
    """A reply's value as text: bytes decoded (UTF-8), a str as it is."""
    return raw.decode() if isinstance(raw, bytes) else raw


def optional_text(raw: bytes | str | None) -> str | None:
    """``text``, None where the reply holds nothing (a missing key or field)."""
    return None if raw is None else text(raw)


def texts(replies: Iterable[bytes | str]) -> list[str]:
    """``text`` of each value of a reply (set members, hash fields, ...), in its order."""
    return [text(raw) for raw in replies]


def stream(reply: Sequence[tuple[object, object]] | None) -> Sequence[StreamEntry]:
    """An ``XRANGE``/``XREVRANGE`` reply: its entries, oldest (or newest) first.

    redis-py allows None and entries without an id or fields (which only ``XCLAIM``'s reply
    of a deleted entry has); the range commands answer a list of whole entries, empty when
    there is none. None is read as empty all the same."""
    return cast("Sequence[StreamEntry]", reply or [])


def members(reply: ZSetRange) -> list[str]:
    """A ``ZRANGE``/``ZREVRANGE`` reply without ``WITHSCORES``: its members as text (redis-py
    types the reply as if it could hold scores)."""
    return texts(cast("list[bytes | str]", reply))


def scored(reply: ZSetRange) -> list[tuple[bytes | str, float]]:
    """A ``ZRANGE``/``ZREVRANGE`` reply with ``WITHSCORES``: (member, score) pairs."""
    return cast("list[tuple[bytes | str, float]]", reply)


def optional_blobs(reply: Sequence[bytes | str | None]) -> list[bytes | None]:
    """An ``HMGET`` reply as the project's clients return it: bytes, None where missing."""
    return cast("list[bytes | None]", reply)


def hash_blobs(reply: Mapping[Any, Any]) -> dict[bytes, bytes]:
    """An ``HGETALL`` reply as the project's clients return it: bytes fields and values."""
    return cast("dict[bytes, bytes]", reply)
