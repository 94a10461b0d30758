import unittest

from roman import from_roman


class RomanTest(unittest.TestCase):
    def test_additive(self):
        self.assertEqual(from_roman("VIII"), 8)

    def test_four(self):
        self.assertEqual(from_roman("IV"), 4)

    def test_year(self):
        self.assertEqual(from_roman("MCMXCIV"), 1994)

    def test_forty_nine(self):
        self.assertEqual(from_roman("XLIX"), 49)


if __name__ == "__main__":
    unittest.main()
