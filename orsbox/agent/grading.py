"""Grading helpers: programs as another uid, files across the uid boundary, hidden tests.

Runs inside the container as part of the agent: stdlib only, Python 3.8+.

The agent is root with only SETUID, SETGID and KILL. It cannot read or write the
command user's files directly (no DAC override), and must not try: following a
symlink in the workspace as root would be an escape. So files cross the uid
boundary through small programs that run as the uid that owns them:

- `write_files` creates files in the workspace as the command user (task data, a repository);
- `collect_files` reads the workspace as the command user: regular files only, no
  symlink followed, bounded in count and size;
- `run_hidden_tests` runs unittest tests the command user never sees against the
  collected code, as a separate grader uid, and counts the verdicts itself
  (`grading_harness.py` says why the candidate code cannot forge them);
- `run_program` runs any argv as any uid/gid, with stdin, a timeout and capped
  stdout/stderr, and afterwards kills every process of that uid (the command
  user's persistent shells spared), one program per uid at a time.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from . import commands
from .commands import LIVE_SHELL_GROUPS, kill_user_processes

#: The harness run as the grader uid; it is readable by every uid (the agent package is), and holds no secret.
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grading_harness.py")

#: PATH of every program started here: fixed, so nothing the command user puts first on its PATH is run.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: How long to wait for output pipes to close once every process of the uid was killed (s).
_DRAIN_TIMEOUT = 5.0


# ---------------------------------------------------------------- running a program as some uid


@dataclass
class ProgramResult:
    """What a program did: its output (capped), how it ended, and how long it took."""

    stdout: bytes
    stderr: bytes
    exit_code: Optional[int]  # negative: killed by that signal; None: never ended
    timed_out: bool
    truncated: bool  # stdout or stderr went past the cap; the rest was dropped
    duration: float  # seconds


def program_env(home: str = "/nonexistent") -> Dict[str, str]:
    """A clean environment for programs: fixed PATH, UTF-8 characters, nothing inherited."""
    return {"PATH": SAFE_PATH, "LC_CTYPE": "C.UTF-8", "HOME": home}


async def run_program(argv: Sequence[str], *, uid: int, gid: int, stdin: bytes = b"", timeout: float = 60.0,
                      cwd: str = "/", env: Optional[Dict[str, str]] = None,
                      output_cap: int = 4 * 1024 * 1024) -> ProgramResult:
    """Run `argv` (no shell) as `uid`/`gid`, with no supplementary groups, in its own session.

    `stdin` is written to it and closed. Past `timeout` it is killed with its
    group. Once it ends, every process of `uid` is killed (for the command user:
    except its persistent shells), so nothing it started outlives it, and
    programs of one uid run one at a time (with `run_command` for the command
    user). Never raises for what the program does.
    """
    async with commands.user_lock(uid):
        if uid != commands.LIMITS.uid:
            kill_user_processes(uid)  # a grader uid starts from nothing: no process left to wait for it
        return await _run_program(list(argv), uid, gid, stdin, timeout, cwd, env or program_env(), output_cap)


async def _run_program(argv: List[str], uid: int, gid: int, stdin: bytes, timeout: float, cwd: str,
                       env: Dict[str, str], output_cap: int) -> ProgramResult:
    started = time.monotonic()
    # Our own pipes, not asyncio's: Process.wait() must mean "the program exited" even while
    # something it started still holds them (Python 3.12+ waits for asyncio's pipes).
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=in_read, stdout=out_write, stderr=err_write, cwd=cwd, env=env,
            start_new_session=True, **commands.drop_privileges(uid, gid),
        )
    except BaseException:
        for fd in (in_write, out_read, err_read):
            os.close(fd)
        raise
    finally:
        for fd in (in_read, out_write, err_write):
            os.close(fd)
    feeder = asyncio.ensure_future(_feed(in_write, stdin))
    out = asyncio.ensure_future(_read_capped(out_read, output_cap))
    err = asyncio.ensure_future(_read_capped(err_read, output_cap))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_user_processes(uid, spare_groups=LIVE_SHELL_GROUPS if uid == commands.LIMITS.uid else ())
        await proc.wait()
    _, pending = await asyncio.wait([feeder, out, err], timeout=_DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
    stdout, out_over = out.result() if out.done() and not out.cancelled() else (b"", False)
    stderr, err_over = err.result() if err.done() and not err.cancelled() else (b"", False)
    return ProgramResult(stdout, stderr, proc.returncode, timed_out, out_over or err_over,
                         time.monotonic() - started)


async def _feed(fd: int, data: bytes) -> None:
    """Write `data` to the pipe `fd` without blocking the loop, then close it; a reader that left is fine."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await _writable(fd)
    except OSError:  # EPIPE: the program stopped reading (or was killed)
        pass
    finally:
        os.close(fd)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def _read_capped(fd: int, cap: int) -> Tuple[bytes, bool]:
    """Everything read from the pipe `fd` until EOF, kept up to `cap` bytes; and whether more came."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    kept = bytearray()
    over = False
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return bytes(kept), over
            room = cap - len(kept)
            kept += data[:max(room, 0)]
            over = over or len(data) > room
    finally:
        transport.close()


# ---------------------------------------------------------------- files across the uid boundary


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


async def write_files(files: Dict[str, str], root: str = "/workspace", *, mode: int = 0o644,
                      modes: Optional[Dict[str, int]] = None) -> None:
    """Create `files` ({path relative to root: text}) as the command user; raises if any cannot be written."""
    modes = modes or {}
    request = {"root": root, "files": {rel: [base64.b64encode(text.encode()).decode(), modes.get(rel, mode)]
                                       for rel, text in files.items()}}
    result = await run_program(_python(_WRITE_FILES), uid=commands.LIMITS.uid, gid=commands.LIMITS.gid,
                               stdin=json.dumps(request).encode(), timeout=30.0,
                               env=program_env(commands.LIMITS.home))
    if result.exit_code != 0:
        raise RuntimeError("could not write the task's files: %s" % result.stderr.decode(errors="replace")[-500:])


async def collect_files(root: str = "/workspace", patterns: Sequence[str] = ("*.py",), *, max_files: int = 200,
                        max_bytes: int = 2 * 1024 * 1024) -> Dict[str, bytes]:
    """The command user's files under `root` whose names match `patterns` ({relative path: content}).

    Read as the command user (so only what it can read), regular files only, symlinks neither followed
    nor entered, hidden folders and __pycache__ skipped. Raises ValueError past `max_files`/`max_bytes`
    or when the files cannot be read.
    """
    argv = _python(_COLLECT_FILES, root, json.dumps(list(patterns)), str(max_files), str(max_bytes))
    result = await run_program(argv, uid=commands.LIMITS.uid, gid=commands.LIMITS.gid, timeout=30.0,
                               env=program_env(commands.LIMITS.home))
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("files", {}), dict):
        raise ValueError("could not read %s: %s" % (root, result.stderr.decode(errors="replace")[-500:]))
    if "error" in answer:
        raise ValueError(str(answer["error"]))
    return {str(rel): base64.b64decode(data) for rel, data in answer["files"].items()}


# ---------------------------------------------------------------- hidden tests


OUTCOMES = ("passed", "failed", "error", "timeout", "skipped", "not_run")


@dataclass
class TestReport:
    """The verdict of every hidden test, as the harness reported it; tests it did not report did not pass."""

    __test__ = False  # not a pytest test class

    outcomes: Dict[str, str]  # test id (file stem.Class.method) -> one of OUTCOMES
    problem: Optional[str] = None  # why the harness gave no verdicts, when it did not
    duration: float = 0.0  # seconds
    counts: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {kind: sum(1 for o in self.outcomes.values() if o == kind) for kind in OUTCOMES}

    @property
    def passed(self) -> int:
        return self.counts["passed"]

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def score(self) -> float:
        """The fraction of hidden tests that passed (0.0 when there are none)."""
        return self.passed / self.total if self.total else 0.0

    def summary(self) -> str:
        parts = ["%d of %d hidden tests passed" % (self.passed, self.total)]
        parts += ["%d %s" % (n, kind) for kind, n in self.counts.items() if n and kind != "passed"]
        text = ", ".join(parts) + "."
        return text + (" The grader reported: %s" % self.problem if self.problem else "")


def hidden_test_ids(tests: Dict[str, str]) -> List[str]:
    """The ids of the tests in `tests` ({file name: source}): `test*` methods of top-level classes.

    Read from the source with `ast`, without running it, so that a harness that loads fewer tests
    (a syntax error, a crash) cannot shrink the denominator.
    """
    ids = []
    for name, source in sorted(tests.items()):
        stem = name[:-3] if name.endswith(".py") else name
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise ValueError("hidden test file %s does not parse: %s" % (name, exc)) from None
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                ids += ["%s.%s.%s" % (stem, node.name, item.name) for item in node.body
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test")]
    return ids


async def run_hidden_tests(tests: Dict[str, str], files: Dict[str, bytes], *, uid: int, gid: int,
                           call_timeout: float = 3.0, budget: float = 45.0, max_timeouts: int = 3) -> TestReport:
    """Run the unittest files `tests` against the candidate `files` as the grader `uid`; never raises for them.

    `tests` are {file name: source}, from a place only the agent can read; they reach the harness on its
    stdin and are never written to disk. `files` (from `collect_files`) are written to a fresh 0700 folder
    of `uid`. Each call into the candidate code may take `call_timeout` s; the run stops after `budget` s
    or `max_timeouts` timed-out tests (the rest do not pass). `uid` must not be the command user's.
    """
    if uid in (0, commands.LIMITS.uid):
        raise ValueError("hidden tests must run as their own uid, not %d" % uid)
    expected = hidden_test_ids(tests)
    payload = {
        "tests": tests,
        "files": {rel: base64.b64encode(data).decode() for rel, data in files.items()},
        "call_timeout": call_timeout, "budget": budget, "max_timeouts": max_timeouts,
    }
    argv = [sys.executable, "-I", "-B", HARNESS, "harness"]
    result = await run_program(argv, uid=uid, gid=gid, stdin=json.dumps(payload).encode(),
                               timeout=budget + 15.0, env=program_env())
    verdicts, problem = _verdicts(result)
    outcomes = {test_id: verdicts.get(test_id, "not_run") for test_id in expected}
    return TestReport(outcomes, problem, result.duration)


def _verdicts(result: ProgramResult) -> Tuple[Dict[str, str], Optional[str]]:
    """The harness's verdicts, or none and why: only a harness that ended normally is believed."""
    if result.timed_out:
        return {}, "the grader did not finish in time"
    if result.exit_code != 0:
        return {}, "the grader ended with status %s: %s" % (
            result.exit_code, result.stderr.decode(errors="replace")[-300:])
    try:
        answer = json.loads(result.stdout)
        verdicts = {str(k): str(v) for k, v in answer["outcomes"].items() if v in OUTCOMES}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}, "the grader gave no readable verdicts"
    return verdicts, None
