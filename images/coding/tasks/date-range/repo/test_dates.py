import unittest
from datetime import date

import dates


class DateRangeTests(unittest.TestCase):
    def test_parse_date(self):
        self.assertEqual(dates.parse_date("2024-02-29"), date(2024, 2, 29))

    def test_days_between(self):
        self.assertEqual(dates.days_between(date(2024, 1, 1), date(2024, 3, 1)), 60)

    def test_range_includes_both_ends(self):
        got = dates.date_range(date(2024, 2, 27), date(2024, 3, 1))
        self.assertEqual(got, [date(2024, 2, 27), date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)])


if __name__ == "__main__":
    unittest.main()
