import unittest

from stack import Stack


class StackTest(unittest.TestCase):
    def test_lifo(self):
        stack = Stack()
        stack.push(1)
        stack.push(2)
        self.assertEqual(stack.pop(), 2)
        self.assertEqual(stack.pop(), 1)

    def test_empty(self):
        with self.assertRaises(IndexError):
            Stack().pop()

    def test_len(self):
        stack = Stack()
        stack.push("a")
        self.assertEqual(len(stack), 1)


if __name__ == "__main__":
    unittest.main()
