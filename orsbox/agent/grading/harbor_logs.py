"""Run as the verifier's uid (never root): empty /logs/verifier, or read the reward files the verifier wrote.

    python3 -I -S harbor_logs.py clear   # remove everything in /logs/verifier (symlinks not followed)
    python3 -I -S harbor_logs.py read    # {"reward.txt": {"text", "over"} | null, "reward.json": ...} on stdout

The folder is the verifier uid's, 0700: only this uid (and what it runs) can write or read there.
Stdlib only, Python 3.8+.
"""

import json
import os
import shutil
import stat
import sys

LOGS = "/logs/verifier"
REWARD_FILES = ("reward.txt", "reward.json")
MAX_READ = 64 * 1024  # bytes of a reward file read; more is reported as `over`


def clear() -> None:
    for name in os.listdir(LOGS):
        path = os.path.join(LOGS, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def read_one(name: str) -> object:
    try:
        fd = os.open(os.path.join(LOGS, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {"text": "", "over": False, "problem": "not a regular file"}
        data = os.read(fd, MAX_READ + 1)
    finally:
        os.close(fd)
    return {"text": data[:MAX_READ].decode("utf-8", "replace"), "over": len(data) > MAX_READ}


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "clear":
        clear()
        return 0
    if mode == "read":
        sys.stdout.write(json.dumps({name: read_one(name) for name in REWARD_FILES}))
        return 0
    sys.stderr.write("usage: harbor_logs.py clear|read\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
