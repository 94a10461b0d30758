import sys


def lines(path):
    with open(path) as f:
        return f.read().split("\n")


try:
    got = lines(sys.argv[1])
except OSError as exc:
    print("no report:", exc)
    got = None
want = lines(sys.argv[2])
ok = got is not None and [line.strip() for line in got if line.strip()] == [line for line in want if line]
print("report matches" if ok else "report differs: %r" % (got,))
with open("/logs/verifier/reward.txt", "w") as f:
    f.write("1" if ok else "0")
