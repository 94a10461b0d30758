"""The store (the sidecar) must say status=counted, and /app/answer.txt hold the widgets count."""

import urllib.request


def get(key: str) -> str:
    try:
        return urllib.request.urlopen("http://store:8080/get?key=" + key, timeout=5).read().decode().strip()
    except OSError as exc:
        return "unreachable: %s" % exc


try:
    with open("/app/answer.txt") as f:
        answer = f.read().strip()
except OSError:
    answer = None
status = get("status")
print("answer %r, store status %r" % (answer, status))
with open("/logs/verifier/reward.txt", "w") as f:
    f.write("1" if answer == "417" and status == "counted" else "0")
