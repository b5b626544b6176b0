"""A small least-recently-used mapping, for the in-memory caches (embeddings, probe results)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from samkit.errors import bad_argument


class LruCache:
    """Up to `items` values; `put` beyond that drops the least recently used one."""

    def __init__(self, items: int):
        if not isinstance(items, int) or items < 1:
            raise bad_argument("items", "an int >= 1", items)
        self.items = items
        self.memory: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        value = self.memory.get(key)
        if value is not None:
            self.memory.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self.memory[key] = value
        self.memory.move_to_end(key)
        while len(self.memory) > self.items:
            self.memory.popitem(last=False)

    def clear(self) -> None:
        self.memory.clear()

    def __len__(self) -> int:
        return len(self.memory)
