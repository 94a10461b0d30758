from decimal import Decimal

from grading_harness import CandidateTestCase


class HiddenTests(CandidateTestCase):
    module = "money"

    def test_half_cents_round_up(self):
        got = [self.mod.to_cents(a) for a in ("0.125", "2.345", "1.005", "0.005")]
        self.assertEqual(got, [Decimal("0.13"), Decimal("2.35"), Decimal("1.01"), Decimal("0.01")])

    def test_negative_half_cents_round_away_from_zero(self):
        got = [self.mod.to_cents(a) for a in ("-0.125", "-2.345")]
        self.assertEqual(got, [Decimal("-0.13"), Decimal("-2.35")])

    def test_other_amounts_round_to_nearest(self):
        got = [self.mod.to_cents(a) for a in ("19.994", "19.996", "3", Decimal("7.1"), 12)]
        self.assertEqual(got, [Decimal("19.99"), Decimal("20.00"), Decimal("3.00"), Decimal("7.10"), Decimal("12.00")])

    def test_result_has_two_places(self):
        self.assertEqual(str(self.mod.to_cents("5")), "5.00")

    def test_tax_on_a_half_cent(self):
        self.assertEqual(self.mod.add_tax("10.50", "0.05"), Decimal("11.03"))
        self.assertEqual(self.mod.add_tax("100", "0.2"), Decimal("120.00"))

    def test_split_a_half_cent_amount(self):
        self.assertEqual(self.mod.split("0.125", 2), [Decimal("0.07"), Decimal("0.06")])

    def test_split_even_and_single(self):
        self.assertEqual(self.mod.split("9.99", 1), [Decimal("9.99")])
        self.assertEqual(self.mod.split("1", 4), [Decimal("0.25")] * 4)

    def test_split_refuses_bad_input(self):
        split = self.mod.split
        with self.assertRaises(ValueError):
            split("10", 0)
        with self.assertRaises(ValueError):
            split("-1", 2)
