from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "slug"

    def test_french(self):
        self.assertEqual(self.mod.slugify("Crème brûlée à la française"), "creme-brulee-a-la-francaise")

    def test_spanish_and_capitals(self):
        self.assertEqual(self.mod.slugify("¡Año Nuevo en MÁLAGA!"), "ano-nuevo-en-malaga")

    def test_nordic_and_czech(self):
        self.assertEqual(self.mod.slugify("Ångström über Dvořák"), "angstrom-uber-dvorak")

    def test_compatibility_characters(self):
        self.assertEqual(self.mod.slugify("ﬁnal ＨＥＬＬＯ №5"), "final-hello-no5")

    def test_letters_without_ascii_form_separate_words(self):
        self.assertEqual(self.mod.slugify("tea 茶 time"), "tea-time")

    def test_ascii_is_unchanged(self):
        self.assertEqual(self.mod.slugify("  Already--a  slug_2  "), "already-a-slug-2")

    def test_cut_at_word_boundary(self):
        self.assertEqual(self.mod.slugify("Élan vital über alles", max_length=15), "elan-vital-uber")
        self.assertEqual(self.mod.slugify("abcdefghij", max_length=4), "abcd")

    def test_empty(self):
        self.assertEqual(self.mod.slugify("!!! ---"), "")
