import unittest

import semver


class SemverTests(unittest.TestCase):
    def test_compare_simple(self):
        self.assertEqual(semver.compare("1.2.3", "1.2.4"), -1)
        self.assertEqual(semver.compare("v2", "2.0.0"), 0)

    def test_bump(self):
        self.assertEqual(semver.bump("1.2.3", "minor"), "1.3.0")

    def test_numbers_compare_as_numbers(self):
        self.assertEqual(semver.compare("1.10.0", "1.9.0"), 1)
        self.assertEqual(semver.latest(["1.9.0", "1.10.0"]), "1.10.0")


if __name__ == "__main__":
    unittest.main()
