"""JSON from clients, with a bound on nesting. Python's decoder recurses once per level: a body of
a thousand '[' raises RecursionError, which no caller expects (they catch ValueError). Every place
that decodes client JSON (the API's parser, serializer and form JSON fields) uses this decoder."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class BoundedJSONDecoder(json.JSONDecoder):
    """A JSONDecoder that refuses documents nested deeper than MAX_DEPTH with a JSONDecodeError
    (a ValueError), never a RecursionError."""

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        try:
            value = super().decode(s, *args, **kwargs)
        except RecursionError:
            raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels deep", s, 0) from None
        if _depth_exceeds(value, MAX_DEPTH):
            raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels deep", s, 0)
        return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
