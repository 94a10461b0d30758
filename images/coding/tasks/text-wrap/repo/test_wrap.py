import unittest

from wrap import fill, wrap


class WrapTests(unittest.TestCase):
    def test_short_text_is_one_line(self):
        self.assertEqual(wrap("hello world", 20), ["hello world"])

    def test_fill_joins_lines(self):
        self.assertEqual(fill("aaa bbb ccc", 7), "aaa bbb\nccc")

    def test_no_line_is_longer_than_the_width(self):
        self.assertEqual(wrap("hello world again", 10), ["hello", "world", "again"])


if __name__ == "__main__":
    unittest.main()
