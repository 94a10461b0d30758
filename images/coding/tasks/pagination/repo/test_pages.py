import unittest

from pages import page_count, page_window, paginate


class PagesTests(unittest.TestCase):
    def test_full_pages(self):
        self.assertEqual(page_count(20, 10), 2)
        self.assertEqual(paginate(list(range(20)), 2, 10), list(range(10, 20)))

    def test_window(self):
        self.assertEqual(page_window(1, 10), [1, 2, 3, 4, 5])

    def test_partial_last_page(self):
        items = list(range(1, 22))
        self.assertEqual(page_count(21, 10), 3)
        self.assertEqual(paginate(items, 3, 10), [21])


if __name__ == "__main__":
    unittest.main()
