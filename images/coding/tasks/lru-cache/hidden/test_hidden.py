from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "lru"

    def test_get_refreshes_recency(self):
        cache = self.mod.LRUCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.get("a"), 1)
        cache.put("c", 3)
        self.assertEqual(cache.keys(), ["a", "c"])
        self.assertIsNone(cache.get("b"))

    def test_keys_follow_use_order(self):
        cache = self.mod.LRUCache(3)
        for key in "xyz":
            cache.put(key, key.upper())
        cache.get("x")
        cache.get("y")
        self.assertEqual(cache.keys(), ["z", "x", "y"])

    def test_put_refreshes_and_updates(self):
        cache = self.mod.LRUCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("a", 10)
        cache.put("c", 3)
        self.assertEqual(cache.keys(), ["a", "c"])
        self.assertEqual(cache.get("a"), 10)

    def test_capacity_one(self):
        cache = self.mod.LRUCache(1)
        cache.put(1, "one")
        cache.put(2, "two")
        self.assertEqual(len(cache), 1)
        self.assertEqual(cache.get(2), "two")
        self.assertEqual(cache.get(1, "gone"), "gone")

    def test_membership_is_not_a_use(self):
        cache = self.mod.LRUCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertIn("a", cache)
        cache.put("c", 3)
        self.assertNotIn("a", cache)

    def test_hits_and_misses(self):
        cache = self.mod.LRUCache(2)
        cache.put("a", 1)
        cache.get("a")
        cache.get("a")
        cache.get("b")
        self.assertEqual((cache.hits, cache.misses), (2, 1))

    def test_a_miss_does_not_evict(self):
        cache = self.mod.LRUCache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        cache.get("a")
        cache.get("zzz")
        cache.put("c", 3)
        self.assertEqual(sorted(cache.keys()), ["a", "c"])

    def test_capacity_must_be_positive(self):
        cls = self.mod.LRUCache
        with self.assertRaises(ValueError):
            cls(0)
