import unittest

from search import find


class FindTest(unittest.TestCase):
    def test_first(self):
        self.assertEqual(find([1, 2, 3, 4, 5], 1), 0)

    def test_last(self):
        self.assertEqual(find([1, 2, 3], 3), 2)

    def test_single(self):
        self.assertEqual(find([7], 7), 0)

    def test_missing(self):
        self.assertEqual(find([1, 3, 5], 4), -1)


if __name__ == "__main__":
    unittest.main()
