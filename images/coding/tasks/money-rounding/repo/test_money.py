import unittest
from decimal import Decimal

import money


class MoneyTests(unittest.TestCase):
    def test_to_cents(self):
        self.assertEqual(money.to_cents("19.999"), Decimal("20.00"))

    def test_split_adds_up(self):
        self.assertEqual(money.split("10", 3), [Decimal("3.34"), Decimal("3.33"), Decimal("3.33")])

    def test_half_a_cent_rounds_away_from_zero(self):
        self.assertEqual(money.to_cents("0.125"), Decimal("0.13"))
        self.assertEqual(money.to_cents("-0.125"), Decimal("-0.13"))


if __name__ == "__main__":
    unittest.main()
