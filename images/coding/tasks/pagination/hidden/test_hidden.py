from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "pages"

    def test_counts(self):
        got = [self.mod.page_count(total, 10) for total in (0, 1, 9, 10, 11, 99, 100, 101)]
        self.assertEqual(got, [0, 1, 1, 1, 2, 10, 10, 11])

    def test_one_per_page(self):
        self.assertEqual(self.mod.page_count(7, 1), 7)

    def test_fewer_items_than_a_page(self):
        self.assertEqual(self.mod.paginate(["a", "b"], 1, 25), ["a", "b"])

    def test_last_partial_page(self):
        items = ["item-%d" % i for i in range(47)]
        self.assertEqual(self.mod.paginate(items, 5, 10), ["item-%d" % i for i in range(40, 47)])

    def test_past_the_last_page(self):
        paginate = self.mod.paginate
        with self.assertRaises(IndexError):
            paginate(list(range(21)), 4, 10)
        with self.assertRaises(IndexError):
            paginate(list(range(21)), 0, 10)

    def test_no_items_no_pages(self):
        paginate = self.mod.paginate
        with self.assertRaises(IndexError):
            paginate([], 1, 10)

    def test_bad_page_size(self):
        page_count = self.mod.page_count
        with self.assertRaises(ValueError):
            page_count(10, 0)

    def test_window_with_a_partial_last_page(self):
        pages = self.mod.page_count(95, 10)
        self.assertEqual(self.mod.page_window(10, pages), [6, 7, 8, 9, 10])
        self.assertEqual(self.mod.page_window(2, self.mod.page_count(3, 1)), [1, 2, 3])
