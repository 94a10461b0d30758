#!/bin/bash
cd /app/calc
sed -i 's/^def mul(a, b)$/def mul(a, b):/' src/calc/ops.py
sed -i 's/, "div": div}/}/' src/calc/ops.py
./build.sh
