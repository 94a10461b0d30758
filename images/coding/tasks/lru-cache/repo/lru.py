"""A least-recently-used cache."""

from collections import OrderedDict


class LRUCache:
    """A mapping that holds at most `capacity` items, evicting the least recently used one.

    `get` and `put` both count as a use of the key; `in` and `len` do not.
    """

    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1, not %r" % (capacity,))
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items = OrderedDict()  # least recently used first

    def get(self, key, default=None):
        """The value of `key` (now the most recently used), or `default`."""
        if key in self._items:
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return default

    def put(self, key, value):
        """Store `value` under `key` (now the most recently used), evicting the least recently used if full."""
        if key in self._items:
            self._items.move_to_end(key)
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def keys(self):
        """The keys, least recently used first."""
        return list(self._items)

    def __len__(self):
        return len(self._items)

    def __contains__(self, key):
        return key in self._items
