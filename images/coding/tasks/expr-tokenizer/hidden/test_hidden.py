from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "tokenizer"

    def test_second_call_starts_empty(self):
        self.mod.tokenize("a + b")
        self.assertEqual(self.mod.tokenize("7"), [("NUM", 7)])

    def test_many_calls(self):
        results = [self.mod.tokenize("%d" % n) for n in range(4)]
        self.assertEqual(results, [[("NUM", n)] for n in range(4)])

    def test_empty_input_after_a_call(self):
        self.mod.tokenize("x")
        self.assertEqual(self.mod.tokenize(""), [])
        self.assertEqual(self.mod.tokenize("   "), [])

    def test_an_error_leaves_nothing_behind(self):
        tokenize = self.mod.tokenize
        with self.assertRaises(ValueError):
            tokenize("1 + $")
        self.assertEqual(tokenize("2"), [("NUM", 2)])

    def test_explicit_list_is_extended_and_returned(self):
        self.assertEqual(self.mod.tokenize("y", [("NAME", "x")]), [("NAME", "x"), ("NAME", "y")])

    def test_numbers(self):
        self.assertEqual(self.mod.tokenize("3.25 .5 42"), [("NUM", 3.25), ("NUM", 0.5), ("NUM", 42)])

    def test_names_and_operators(self):
        self.assertEqual(self.mod.tokenize("max(a_1,b)^2 % 3"),
                         [("NAME", "max"), ("OP", "("), ("NAME", "a_1"), ("OP", ","), ("NAME", "b"), ("OP", ")"),
                          ("OP", "^"), ("NUM", 2), ("OP", "%"), ("NUM", 3)])

    def test_bad_number(self):
        tokenize = self.mod.tokenize
        with self.assertRaises(ValueError):
            tokenize("1.2.3")
