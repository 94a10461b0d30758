from grading_harness import CandidateTestCase

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief")


class HiddenTests(CandidateTestCase):
    module = "wrap"

    def test_no_line_over_width(self):
        for width in (5, 10, 11, 17, 30):
            lines = self.mod.wrap(TEXT, width)
            self.assertTrue(all(len(line) <= width or " " not in line for line in lines), (width, lines))
            self.assertEqual(" ".join(lines), TEXT)

    def test_one_over_is_broken(self):
        self.assertEqual(self.mod.wrap("hello world again", 10), ["hello", "world", "again"])

    def test_exact_fit_stays_on_one_line(self):
        self.assertEqual(self.mod.wrap("hello world again", 11), ["hello world", "again"])

    def test_greedy_lines(self):
        self.assertEqual(self.mod.wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"])

    def test_long_words_are_not_broken(self):
        self.assertEqual(self.mod.wrap("tiny supercalifragilistic word", 8), ["tiny", "supercalifragilistic", "word"])

    def test_whitespace_is_collapsed(self):
        self.assertEqual(self.mod.wrap("  one\ttwo \n three  ", 9), ["one two", "three"])
        self.assertEqual(self.mod.wrap("   ", 5), [])

    def test_width_one(self):
        self.assertEqual(self.mod.wrap("a b c", 1), ["a", "b", "c"])

    def test_bad_width(self):
        wrap = self.mod.wrap
        with self.assertRaises(ValueError):
            wrap("text", 0)

    def test_fill(self):
        self.assertEqual(self.mod.fill("the quick brown fox", 9), "the quick\nbrown fox")
