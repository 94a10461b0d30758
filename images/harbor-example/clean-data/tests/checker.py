"""The hidden checker: /app/clean.csv row by row against the expected file; the reward is all or nothing,
and reward.json also reports the fraction of expected rows found."""

import csv
import json


def rows(path):
    with open(path, newline="") as f:
        return [tuple(row) for row in csv.reader(f)]


expected = rows("/tests/expected.csv")
try:
    got = rows("/app/clean.csv")
except (OSError, csv.Error) as exc:
    print("cannot read /app/clean.csv:", exc)
    got = []
found = len(set(got[1:]) & set(expected[1:])) / (len(expected) - 1)
exact = got == expected
print("exact" if exact else "differs (%.0f%% of the expected rows found)" % (100 * found))
with open("/logs/verifier/reward.json", "w") as f:
    json.dump({"reward": 1.0 if exact else 0.0, "rows_found": round(found, 4)}, f)
