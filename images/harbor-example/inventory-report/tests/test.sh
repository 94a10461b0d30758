#!/bin/bash
# Compares /app/summary.csv with the expected summary; EXPECTED_CATEGORIES comes from task.toml's [verifier].env.
want_rows=$((EXPECTED_CATEGORIES + 1))
if [ "$(wc -l < /app/summary.csv 2>/dev/null)" = "$want_rows" ] && diff -q /app/summary.csv /tests/expected.csv; then
  echo 1 > /logs/verifier/reward.txt
else
  echo "summary differs from the expected one (or has no $want_rows lines)"
  echo 0 > /logs/verifier/reward.txt
fi
