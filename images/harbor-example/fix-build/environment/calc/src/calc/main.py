import sys

from calc.ops import OPERATIONS


def run() -> None:
    name, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(OPERATIONS[name](a, b))
