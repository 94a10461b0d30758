from datetime import date

from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "dates"

    def test_end_is_included(self):
        got = self.mod.date_range(date(2023, 12, 30), date(2024, 1, 2))
        self.assertEqual(got, [date(2023, 12, 30), date(2023, 12, 31), date(2024, 1, 1), date(2024, 1, 2)])

    def test_single_day(self):
        self.assertEqual(self.mod.date_range(date(2024, 5, 5), date(2024, 5, 5)), [date(2024, 5, 5)])

    def test_end_before_start_is_empty(self):
        self.assertEqual(self.mod.date_range(date(2024, 5, 5), date(2024, 5, 4)), [])

    def test_weekly_steps_reach_an_aligned_end(self):
        got = self.mod.date_range(date(2024, 1, 1), date(2024, 1, 29), step_days=7)
        self.assertEqual([d.day for d in got], [1, 8, 15, 22, 29])

    def test_steps_stop_before_an_unaligned_end(self):
        got = self.mod.date_range(date(2024, 1, 1), date(2024, 1, 20), step_days=7)
        self.assertEqual([d.day for d in got], [1, 8, 15])

    def test_month_range_of_a_leap_february(self):
        got = self.mod.month_range(2024, 2)
        self.assertEqual((len(got), got[0], got[-1]), (29, date(2024, 2, 1), date(2024, 2, 29)))

    def test_bad_step(self):
        date_range = self.mod.date_range
        with self.assertRaises(ValueError):
            date_range(date(2024, 1, 1), date(2024, 1, 2), step_days=0)

    def test_parse_and_days_between(self):
        start, end = self.mod.parse_date(" 2023-03-01 "), self.mod.parse_date("2024-03-01")
        self.assertEqual(self.mod.days_between(start, end), 366)
        self.assertEqual(self.mod.days_between(end, start), -366)
