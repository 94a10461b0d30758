"""Roman numerals."""

VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def from_roman(numeral):
    """The value of a Roman numeral such as 'MCMXCIV'."""
    total = 0
    for index in range(len(numeral)):
        value = VALUES[numeral[index]]
        total += value
    return total
