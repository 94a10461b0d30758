#!/bin/bash
cd /app
cat > /tmp/clean.py <<'PY'
import csv
import datetime

def iso(text):
    for form in ("%Y-%m-%d", "%d/%m/%Y", "%b %d %Y"):
        try:
            return datetime.datetime.strptime(text, form).date().isoformat()
        except ValueError:
            pass
    raise ValueError(text)

seen = {}
with open("/app/customers.csv", newline="") as f:
    for row in csv.DictReader(f):
        row = {k.strip(): v.strip() for k, v in row.items()}
        row["email"] = row["email"].lower()
        row["signup"] = iso(row["signup"])
        row["country"] = row["country"] or "unknown"
        seen.setdefault(row["email"], row)
with open("/app/clean.csv", "w", newline="") as f:
    out = csv.DictWriter(f, ["name", "email", "signup", "country"], lineterminator="\n")
    out.writeheader()
    for email in sorted(seen):
        out.writerow(seen[email])
PY
python3 /tmp/clean.py
wc -l clean.csv
