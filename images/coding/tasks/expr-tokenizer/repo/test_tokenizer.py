import unittest

from tokenizer import tokenize


class TokenizeTests(unittest.TestCase):
    def test_expression(self):
        self.assertEqual(tokenize("2*(x + 10)"),
                         [("NUM", 2), ("OP", "*"), ("OP", "("), ("NAME", "x"), ("OP", "+"), ("NUM", 10), ("OP", ")")])

    def test_calls_are_independent(self):
        self.assertEqual(tokenize("1 + 2"), [("NUM", 1), ("OP", "+"), ("NUM", 2)])
        self.assertEqual(tokenize("x"), [("NAME", "x")])


if __name__ == "__main__":
    unittest.main()
