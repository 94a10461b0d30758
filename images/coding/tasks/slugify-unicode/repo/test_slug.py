import unittest

from slug import slugify


class SlugifyTests(unittest.TestCase):
    def test_ascii_title(self):
        self.assertEqual(slugify("Hello, World! 2024 edition"), "hello-world-2024-edition")

    def test_long_titles_are_cut_between_words(self):
        self.assertEqual(slugify("one two three four", max_length=12), "one-two")

    def test_accents_are_removed(self):
        self.assertEqual(slugify("Crème Brûlée recipe"), "creme-brulee-recipe")


if __name__ == "__main__":
    unittest.main()
