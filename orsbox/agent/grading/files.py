"""Files across the uid boundary: written and read as the command user, never by the agent itself.

Runs inside the container as part of the agent: stdlib only, Python 3.8+.

The agent is root with only SETUID, SETGID and KILL. It cannot read or write the
command user's files directly (no DAC override), and must not try: following a
symlink in the workspace as root would be an escape. So files cross the uid
boundary through small programs that run as the uid that owns them:

- `write_files` creates files in the workspace as the command user (task data, a repository);
- `collect_files` reads the workspace as the command user: regular files only, no
  symlink followed, bounded in count and size.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Dict, List, Optional, Sequence

from ..layout import WORKSPACE
from ..runtime.processes import RUNNER, program_env

_WRITE_FILES = r'''
import base64, json, os, sys
request = json.loads(sys.stdin.buffer.read())
root = request["root"]
for rel, (data, mode) in sorted(request["files"].items()):
    path = os.path.normpath(os.path.join(root, rel))
    if os.path.isabs(rel) or not path.startswith(root.rstrip("/") + "/"):
        sys.exit("refused path outside %s: %r" % (root, rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    os.chmod(path, mode)
print(json.dumps({"written": len(request["files"])}))
'''

_COLLECT_FILES = r'''
import base64, fnmatch, json, os, stat, sys
root, patterns, max_files, max_bytes = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
files, total = {}, 0
for folder, dirs, names in os.walk(root):  # symlinked folders are listed, never entered
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
    for name in sorted(names):
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        path = os.path.join(folder, name)
        try:  # regular files only: no symlink followed, no FIFO waited on
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            data = f.read(max_bytes - total + 1)
        total += len(data)
        if len(files) >= max_files or total > max_bytes:
            print(json.dumps({"error": "more than %d files or %d bytes to grade" % (max_files, max_bytes)}))
            sys.exit(0)
        files[os.path.relpath(path, root)] = base64.b64encode(data).decode()
print(json.dumps({"files": files}))
'''


def _python(script: str, *args: str) -> List[str]:
    """argv running `script` isolated (-I: no PYTHON* variables, user site, or cwd on sys.path), without site."""
    return [sys.executable, "-I", "-S", "-c", script, *args]


async def write_files(files: Dict[str, str], root: str = WORKSPACE, *, mode: int = 0o644,
                      modes: Optional[Dict[str, int]] = None) -> None:
    """Create `files` ({path relative to root: text}) as the command user; raises if any cannot be written."""
    modes = modes or {}
    request = {"root": root, "files": {rel: [base64.b64encode(text.encode()).decode(), modes.get(rel, mode)]
                                       for rel, text in files.items()}}
    limits = RUNNER.limits
    result = await RUNNER.run_program(_python(_WRITE_FILES), uid=limits.uid, gid=limits.gid,
                                      stdin=json.dumps(request).encode(), timeout=30.0, env=program_env(limits.home))
    if result.exit_code != 0:
        raise RuntimeError("could not write the task's files: %s" % result.stderr.decode(errors="replace")[-500:])


async def collect_files(root: str = WORKSPACE, patterns: Sequence[str] = ("*.py",), *, max_files: int = 200,
                        max_bytes: int = 2 * 1024 * 1024) -> Dict[str, bytes]:
    """The command user's files under `root` whose names match `patterns` ({relative path: content}).

    Read as the command user (so only what it can read), regular files only, symlinks neither followed
    nor entered, hidden folders and __pycache__ skipped. Raises ValueError past `max_files`/`max_bytes`
    or when the files cannot be read.
    """
    argv = _python(_COLLECT_FILES, root, json.dumps(list(patterns)), str(max_files), str(max_bytes))
    limits = RUNNER.limits
    result = await RUNNER.run_program(argv, uid=limits.uid, gid=limits.gid, timeout=30.0,
                                      env=program_env(limits.home))
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("files", {}), dict):
        raise ValueError("could not read %s: %s" % (root, result.stderr.decode(errors="replace")[-500:]))
    if "error" in answer:
        raise ValueError(str(answer["error"]))
    return {str(rel): base64.b64decode(data) for rel, data in answer["files"].items()}

