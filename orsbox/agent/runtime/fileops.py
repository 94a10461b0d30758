"""File operations for the file tools, run as the command user: `python3 -I -S fileops.py < request.json`.

A separate process with the command user's identity does the work, so it can
reach nothing that user could not; on top of that, every path must resolve
(symlinks followed) to a place inside the workspace, and the final component
is opened with O_NOFOLLOW. Answers one JSON object on stdout:
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

Stdlib only, Python 3.8+; imports nothing from orsbox (it runs with -I).
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # typing would cost every file operation a few ms to import: the types are for checkers
if TYPE_CHECKING:
    from typing import Any, Callable, Dict

MAX_READ = 16 * 1024 * 1024  # bytes read from one file at most
MAX_ENTRIES = 2000  # entries listed at most


class Refused(Exception):
    pass


def inside(workspace: str, path: str) -> str:
    """The absolute, symlink-free form of `path` (relative to the workspace); refuses anything outside."""
    root = os.path.realpath(workspace)
    full = os.path.realpath(os.path.join(root, path))
    if full != root and not full.startswith(root + os.sep):
        raise Refused("%s is outside the workspace %s" % (path, workspace))
    return full


def read_text(full: str) -> str:
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not os.path.isfile(full):
            raise Refused("%s is not a regular file" % full)
        data = f.read(MAX_READ + 1)
    if len(data) > MAX_READ:
        raise Refused("%s is larger than %d bytes" % (full, MAX_READ))
    if b"\0" in data[:8192]:
        raise Refused("%s looks like a binary file" % full)
    return data.decode("utf-8", "replace")


def write_text(full: str, content: str) -> None:
    parent = os.path.dirname(full)
    os.makedirs(parent, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(full, flags, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode("utf-8"))


def op_read(workspace: str, req: Dict[str, Any]) -> Dict[str, Any]:
    full = inside(workspace, req["path"])
    lines = read_text(full).splitlines(True)
    start = max(1, int(req.get("start_line") or 1))
    end = min(len(lines), int(req.get("end_line") or len(lines)))
    numbered = "".join("%6d\t%s" % (n, lines[n - 1]) for n in range(start, end + 1))
    return {"text": numbered, "lines": len(lines), "start_line": start, "end_line": end}


def op_write(workspace: str, req: Dict[str, Any]) -> Dict[str, Any]:
    full = inside(workspace, req["path"])
    write_text(full, req["content"])
    return {"bytes": len(req["content"].encode("utf-8")), "path": full}


def op_edit(workspace: str, req: Dict[str, Any]) -> Dict[str, Any]:
    full = inside(workspace, req["path"])
    text, old, new = read_text(full), req["old"], req["new"]
    count = text.count(old) if old else 0
    if count != 1:
        raise Refused("old text must occur exactly once in %s; it occurs %d times" % (full, count))
    write_text(full, text.replace(old, new, 1))
    line = text[: text.index(old)].count("\n") + 1
    return {"path": full, "line": line}


def op_list(workspace: str, req: Dict[str, Any]) -> Dict[str, Any]:
    full = inside(workspace, req.get("path") or ".")
    entries = []
    for name in sorted(os.listdir(full))[:MAX_ENTRIES]:
        path = os.path.join(full, name)
        kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
        size = os.lstat(path).st_size if kind == "file" else None
        entries.append({"name": name, "kind": kind, "size": size})
    return {"path": full, "entries": entries}


OPS: Dict[str, Callable[[str, Dict[str, Any]], Dict[str, Any]]] = {
    "read": op_read, "write": op_write, "edit": op_edit, "list": op_list,
}


def main() -> None:
    try:
        req = json.load(sys.stdin)
        answer = OPS[req["op"]](req["workspace"], req)
        answer["ok"] = True
    except Refused as exc:
        answer = {"ok": False, "error": str(exc)}
    except OSError as exc:
        answer = {"ok": False, "error": "%s: %s" % (exc.strerror or type(exc).__name__, exc.filename or "")}
    except (KeyError, ValueError, TypeError) as exc:
        answer = {"ok": False, "error": "bad request: %r" % (exc,)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
