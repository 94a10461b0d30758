"""The `python` example environment: math and data questions answered by running Python.

Task objects are public (clients list them): an id and an instruction. The data a
task needs is generated in `setup()` from the task id (so every session of a task
sees the same files), written to /workspace as the command user, and the expected
answer is computed from the same data and kept in this process's memory. This
file is installed root-only (0700), so commands, which run as uid 1000, can read
neither the answers nor how they are derived.

`submit(answer)` compares numerically: |answer - expected| within the task's
relative or absolute tolerance.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Tuple

from orsbox.agent import TaskTable, TextBlock, ToolOutput, tool
from orsbox.agent.grading import write_files
from orsbox.agent.toolsets import ShellTools

TASKS: Dict[str, List[Dict[str, str]]] = {
    "train": [
        {"id": "sales-revenue", "instruction": "/workspace/sales.csv lists sales with the columns date, region, "
         "product, units and unit_price. What is the total revenue (units × unit_price, summed) of the region "
         "'north'?"},
        {"id": "sample-stddev", "instruction": "/workspace/measurements.txt holds one measurement per line; "
         "lines starting with # are comments and blank lines are to be ignored. What is the sample standard "
         "deviation (n − 1 in the denominator) of the measurements?"},
        {"id": "regression-slope", "instruction": "/workspace/points.csv holds points (columns x and y). What is "
         "the slope of the least-squares regression line y = a + b·x through them (the value of b)?"},
        {"id": "gaussian-integral", "instruction": "What is the value of the integral of exp(−x²) for x from 0 "
         "to 2? Give at least 6 correct decimal places."},
        {"id": "matrix-determinant", "instruction": "/workspace/matrix.json holds a square matrix of integers as "
         "a list of rows. What is its determinant?"},
    ],
    "test": [
        {"id": "top-customer", "instruction": "/workspace/orders.json is a list of orders; each has a customer "
         "and items with qty and price. How much did the customer who spent the most spend in total "
         "(qty × price over all their orders)?"},
        {"id": "median-temperature", "instruction": "/workspace/temperatures.csv has the columns date, city and "
         "temp_c; missing readings are written NA. What is the median temperature of the city Oslo, ignoring "
         "missing readings?"},
        {"id": "grid-product", "instruction": "/workspace/grid.txt is a grid of two-digit numbers separated by "
         "spaces. What is the greatest product of four adjacent numbers in the same direction (horizontal, "
         "vertical or either diagonal)?"},
        {"id": "loan-balance", "instruction": "/workspace/loan.json describes a loan: principal, annual_rate "
         "(e.g. 0.05 for 5 %), monthly_payment and months. Each month, interest of annual_rate / 12 is added to "
         "the balance, then the payment is subtracted. What is the balance after the given number of months? "
         "Give it to the cent."},
        {"id": "collatz-longest", "instruction": "/workspace/params.json gives a limit N. Which starting number "
         "below N produces the longest Collatz sequence (n → n/2 if n is even, 3n + 1 if odd, until 1)? If "
         "several do, give the smallest."},
    ],
}


@dataclass
class Expected:
    """A task's answer and how close a submission must come to it."""

    value: float
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9

    def accepts(self, answer: float) -> bool:
        return math.isclose(answer, self.value, rel_tol=self.rel_tol, abs_tol=self.abs_tol)


Files = Dict[str, str]
Builder = Callable[[random.Random], Tuple[Files, Expected]]


class PythonEnvironment(ShellTools, TaskTable):
    """Questions answered by running Python in a persistent shell (`bash`, `restart_shell`), then `submit`."""

    task_table = TASKS

    def __init__(self, task: Dict[str, str], secrets: Optional[Dict[str, str]] = None) -> None:
        super().__init__(task, secrets)
        self.expected: Optional[Expected] = None

    async def setup(self) -> None:
        files, self.expected = BUILDERS[self.task["id"]](random.Random(self.task["id"]))
        if files:
            await write_files(files)

    def get_prompt(self) -> List[TextBlock]:
        return [TextBlock(self.task["instruction"] + "\n\nUse the bash tool to work in /workspace (python3 is "
                          "installed), then call submit with your answer: just the number.")]

    @tool(exclusive=True)
    async def submit(self, answer: str) -> ToolOutput:
        """Submit your answer, a number (e.g. 42 or 3.14159). Ends the episode."""
        assert self.expected is not None, "setup() has not run"
        value = parse_number(answer)
        correct = value is not None and self.expected.accepts(value)
        verdict = "not a number" if value is None else "correct" if correct else "incorrect"
        return ToolOutput(blocks=[TextBlock("Submitted %s: %s." % (answer.strip()[:100], verdict))],
                          metadata={"correct": correct}, reward=1.0 if correct else 0.0, finished=True)


def parse_number(text: str) -> Optional[float]:
    """The number in `text` ("1,234.5", "1_000", " 42 "), or None; infinities and NaN are not numbers."""
    try:
        value = float(text.strip().replace(",", "").replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- task data and answers


def build_sales_revenue(rng: random.Random) -> Tuple[Files, Expected]:
    regions, products = ["north", "south", "east", "west"], ["widget", "gadget", "gizmo", "doohickey"]
    rows, revenue = ["date,region,product,units,unit_price"], Fraction(0)
    for _ in range(rng.randint(300, 500)):
        region, units, price = rng.choice(regions), rng.randint(1, 40), "%.2f" % rng.uniform(0.5, 120)
        rows.append("2025-%02d-%02d,%s,%s,%d,%s" % (rng.randint(1, 12), rng.randint(1, 28), region,
                                                    rng.choice(products), units, price))
        revenue += units * Fraction(price) if region == "north" else 0
    return {"sales.csv": "\n".join(rows) + "\n"}, Expected(float(revenue))


def build_sample_stddev(rng: random.Random) -> Tuple[Files, Expected]:
    values = [round(rng.gauss(50, 12), 3) for _ in range(rng.randint(80, 150))]
    lines = ["# sensor readings, one per line"]
    for i, value in enumerate(values):
        lines += [repr(value)] + ([""] if i % 17 == 5 else []) + (["# recalibrated"] if i % 41 == 9 else [])
    return {"measurements.txt": "\n".join(lines) + "\n"}, Expected(statistics.stdev(values))


def build_regression_slope(rng: random.Random) -> Tuple[Files, Expected]:
    a, b = rng.uniform(-5, 5), rng.uniform(-3, 3)
    points = [(x, round(a + b * x + rng.gauss(0, 2), 4)) for x in (round(rng.uniform(0, 50), 3) for _ in range(60))]
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    rows = ["x,y"] + ["%r,%r" % point for point in points]
    return {"points.csv": "\n".join(rows) + "\n"}, Expected(slope)


def build_gaussian_integral(rng: random.Random) -> Tuple[Files, Expected]:
    return {}, Expected(math.sqrt(math.pi) / 2 * math.erf(2), rel_tol=0, abs_tol=1e-6)


def build_matrix_determinant(rng: random.Random) -> Tuple[Files, Expected]:
    matrix = [[rng.randint(-9, 9) for _ in range(6)] for _ in range(6)]
    return {"matrix.json": json.dumps(matrix) + "\n"}, Expected(float(exact_determinant(matrix)), rel_tol=1e-9,
                                                                 abs_tol=1e-6)


def exact_determinant(matrix: List[List[int]]) -> Fraction:
    """Gaussian elimination over fractions: exact."""
    rows = [[Fraction(v) for v in row] for row in matrix]
    det = Fraction(1)
    for col in range(len(rows)):
        pivot = next((r for r in range(col, len(rows)) if rows[r][col] != 0), None)
        if pivot is None:
            return Fraction(0)
        if pivot != col:
            rows[col], rows[pivot] = rows[pivot], rows[col]
            det = -det
        det *= rows[col][col]
        for r in range(col + 1, len(rows)):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [v - factor * p for v, p in zip(rows[r], rows[col])]  # noqa: B905 - no strict= on 3.8
    return det


def build_top_customer(rng: random.Random) -> Tuple[Files, Expected]:
    customers = ["ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances"]
    orders, spent = [], {c: Fraction(0) for c in customers}
    for number in range(rng.randint(60, 90)):
        customer = rng.choice(customers)
        items = [{"sku": "SKU-%03d" % rng.randint(1, 300), "qty": rng.randint(1, 5),
                  "price": round(rng.uniform(1, 250), 2)} for _ in range(rng.randint(1, 6))]
        orders.append({"order_id": 1000 + number, "customer": customer, "items": items})
        spent[customer] += sum(item["qty"] * Fraction(str(item["price"])) for item in items)
    return {"orders.json": json.dumps(orders, indent=1) + "\n"}, Expected(float(max(spent.values())))


def build_median_temperature(rng: random.Random) -> Tuple[Files, Expected]:
    rows, oslo = ["date,city,temp_c"], []
    for day in range(1, 366):
        for city in ("Oslo", "Lisbon", "Cairo"):
            if rng.random() < 0.08:
                rows.append("2025-%03d,%s,NA" % (day, city))
                continue
            temp = round(rng.gauss({"Oslo": 6, "Lisbon": 17, "Cairo": 23}[city], 7), 1)
            rows.append("2025-%03d,%s,%s" % (day, city, temp))
            if city == "Oslo":
                oslo.append(temp)
    return {"temperatures.csv": "\n".join(rows) + "\n"}, Expected(statistics.median(oslo), abs_tol=1e-9)


def build_grid_product(rng: random.Random) -> Tuple[Files, Expected]:
    size = 20
    grid = [[rng.randint(0, 99) for _ in range(size)] for _ in range(size)]
    best = 0
    for r in range(size):
        for c in range(size):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                cells = [(r + k * dr, c + k * dc) for k in range(4)]
                if all(0 <= y < size and 0 <= x < size for y, x in cells):
                    best = max(best, math.prod(grid[y][x] for y, x in cells))
    text = "\n".join(" ".join("%02d" % v for v in row) for row in grid)
    return {"grid.txt": text + "\n"}, Expected(float(best), rel_tol=0, abs_tol=0.5)


def build_loan_balance(rng: random.Random) -> Tuple[Files, Expected]:
    principal, rate = rng.randint(100, 400) * 1000, round(rng.uniform(0.02, 0.08), 4)
    # 1.1 to 1.6 times the first month's interest: the loan is never paid off within 120 months
    loan = {"principal": principal, "annual_rate": rate, "months": rng.randint(24, 120),
            "monthly_payment": round(principal * rate / 12 * rng.uniform(1.1, 1.6), -1)}
    balance = float(loan["principal"])
    for _ in range(int(loan["months"])):
        balance = balance * (1 + loan["annual_rate"] / 12) - loan["monthly_payment"]
    return {"loan.json": json.dumps(loan, indent=1) + "\n"}, Expected(balance, rel_tol=0, abs_tol=0.01)


def build_collatz_longest(rng: random.Random) -> Tuple[Files, Expected]:
    limit = rng.randint(20000, 40000)
    lengths = {1: 1}

    def length(n: int) -> int:
        path = []
        while n not in lengths:
            path.append(n)
            n = n // 2 if n % 2 == 0 else 3 * n + 1
        total = lengths[n]
        for m in reversed(path):
            total += 1
            lengths[m] = total
        return total

    best = max(range(1, limit), key=lambda n: (length(n), -n))
    return {"params.json": json.dumps({"N": limit}) + "\n"}, Expected(float(best), rel_tol=0, abs_tol=0.5)


BUILDERS: Dict[str, Builder] = {
    "sales-revenue": build_sales_revenue,
    "sample-stddev": build_sample_stddev,
    "regression-slope": build_regression_slope,
    "gaussian-integral": build_gaussian_integral,
    "matrix-determinant": build_matrix_determinant,
    "top-customer": build_top_customer,
    "median-temperature": build_median_temperature,
    "grid-product": build_grid_product,
    "loan-balance": build_loan_balance,
    "collatz-longest": build_collatz_longest,
}
