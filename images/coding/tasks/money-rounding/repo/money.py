"""Money helpers on decimal.Decimal."""

from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


def to_cents(amount):
    """`amount` (a Decimal, str or int) rounded to whole cents, half a cent away from zero.

    to_cents("0.125") == Decimal("0.13"), to_cents("-0.125") == Decimal("-0.13").
    """
    return Decimal(amount).quantize(CENT, rounding=ROUND_HALF_EVEN)


def add_tax(amount, rate):
    """`amount` plus `rate` (e.g. "0.2" for 20 %) of it, to the cent."""
    return to_cents(Decimal(amount) * (1 + Decimal(rate)))


def split(amount, parts):
    """`amount` to the cent, split into `parts` amounts of whole cents that add up to it exactly.

    The first parts get the extra cents: split("10", 3) == [3.34, 3.33, 3.33].
    """
    if parts < 1:
        raise ValueError("parts must be at least 1, not %r" % (parts,))
    cents = int(to_cents(amount) * 100)
    if cents < 0:
        raise ValueError("cannot split a negative amount")
    base, extra = divmod(cents, parts)
    return [Decimal(base + (1 if i < extra else 0)) / 100 for i in range(parts)]
