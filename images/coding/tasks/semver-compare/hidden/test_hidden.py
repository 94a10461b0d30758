from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "semver"

    def test_parse_gives_integers(self):
        self.assertEqual(self.mod.parse("v1.2"), (1, 2, 0))
        self.assertEqual(self.mod.parse("10.0.07"), (10, 0, 7))

    def test_multi_digit_parts(self):
        got = [self.mod.compare(a, b) for a, b in (("1.10.0", "1.9.0"), ("0.9.9", "0.10.0"), ("10.0", "9.99.99"))]
        self.assertEqual(got, [1, -1, 1])

    def test_leading_zeros_are_the_same_number(self):
        self.assertEqual(self.mod.compare("1.02.0", "1.2"), 0)

    def test_latest(self):
        self.assertEqual(self.mod.latest(["2.9.9", "2.10.0", "2.1.0", "v2.10"]), "2.10.0")

    def test_simple_comparisons(self):
        got = [self.mod.compare(a, b) for a, b in (("1.2.3", "1.2.3"), ("1.2.3", "1.3"), ("2", "1.9.9"))]
        self.assertEqual(got, [0, -1, 1])

    def test_bump(self):
        got = [self.mod.bump("1.9.9", part) for part in ("patch", "minor", "major")]
        self.assertEqual(got, ["1.9.10", "1.10.0", "2.0.0"])

    def test_invalid_versions(self):
        parse = self.mod.parse
        for text in ("", "1.2.3.4", "1.x", "-1.0", "1..2"):
            with self.assertRaises(ValueError):
                parse(text)

    def test_sorting_with_parse(self):
        versions = ["1.10.1", "1.2.0", "1.10.0", "1.9.12"]
        self.assertEqual(sorted(versions, key=lambda v: self.mod.parse(v)), ["1.2.0", "1.9.12", "1.10.0", "1.10.1"])
