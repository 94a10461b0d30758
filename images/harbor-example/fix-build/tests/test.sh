#!/bin/bash
# The tool the agent built, run on cases it was not shown.
cd /app/calc || { echo 0 > /logs/verifier/reward.txt; exit 0; }
ok=1
check() { got=$(python3 dist/calc.pyz "$1" "$2" "$3" 2>&1); [ "$got" = "$4" ] || { echo "calc $1 $2 $3: got '$got', want '$4'"; ok=0; }; }
check add 40 2 42
check sub 7 10 -3
check mul 6 7 42
check mul -3 5 -15
echo "$ok" > /logs/verifier/reward.txt
