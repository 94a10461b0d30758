#!/bin/bash
# Build dist/calc.pyz from src/: byte-compile every module first, so a broken one fails the build.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m compileall -q src
mkdir -p dist
python3 -m zipapp src -m "calc.main:run" -o dist/calc.pyz -p "/usr/bin/env python3"
echo "built dist/calc.pyz"
