#!/bin/bash
cd /app
python3 - <<'PY'
import urllib.request

value = urllib.request.urlopen("http://store:8080/get?key=widgets", timeout=5).read().decode().strip()
with open("/app/answer.txt", "w") as f:
    f.write(value + "\n")
urllib.request.urlopen(urllib.request.Request("http://store:8080/set?key=status&value=counted", method="POST"),
                       timeout=5).read()
print("widgets =", value)
PY
