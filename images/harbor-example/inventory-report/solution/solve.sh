#!/bin/bash
cd /app
python3 - <<'PY'
import json
from decimal import Decimal

totals = {}
for item in json.load(open("/app/inventory.json")):
    count, value = totals.get(item["category"], (0, Decimal(0)))
    totals[item["category"]] = (count + 1, value + Decimal(str(item["price"])) * item["quantity"])
with open("/app/summary.csv", "w") as f:
    f.write("category,items,value\n")
    for category in sorted(totals):
        count, value = totals[category]
        f.write("%s,%d,%s\n" % (category, count, value.quantize(Decimal("0.01"))))
PY
cat summary.csv
