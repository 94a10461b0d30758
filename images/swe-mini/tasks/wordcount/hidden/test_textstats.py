import unittest

from textstats import count_words, longest_word


class TextStatsTest(unittest.TestCase):
    def test_spaces(self):
        self.assertEqual(count_words("one two three"), 3)

    def test_newlines_and_tabs(self):
        self.assertEqual(count_words("a  b\nc\td"), 4)

    def test_only_whitespace(self):
        self.assertEqual(count_words(" \n\t "), 0)

    def test_longest(self):
        self.assertEqual(longest_word("a bbb cc"), "bbb")


if __name__ == "__main__":
    unittest.main()
