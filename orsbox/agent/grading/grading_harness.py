"""The hidden-test harness: unittest tests against candidate code that runs in another process.

Started by `orsbox.agent.grading.run_hidden_tests` as the grader uid (never the
command user): `python3 -I -B grading_harness.py harness`, the payload (tests,
candidate files, limits) on stdin, one JSON line of verdicts on stdout. Stdlib
only, Python 3.8+. Hidden tests are ordinary unittest files:

    from grading_harness import CandidateTestCase

    class HiddenTests(CandidateTestCase):
        module = "wrapper"                      # the candidate module, as self.mod

        def test_long_words(self):
            self.assertEqual(self.mod.wrap("a bb ccc", 4), ["a bb", "ccc"])

Why the candidate code cannot forge a verdict:

- It never runs in this process. Each test gets a fresh *worker* process
  (`grading_harness.py worker DIR`) that imports the candidate modules and
  answers calls over a pipe: `self.mod.wrap(...)` is a call in the worker,
  its result comes back as plain data (JSON with a few tagged types) and
  objects as handles (`Remote`). The assertions, the expected values and
  unittest itself live here; patching unittest, `sys.exit`/`os._exit` at
  import, printing, or looping forever happen in the worker and at most make
  tests fail.
- This process makes itself non-dumpable before it reads the payload, so a
  worker (same uid) can neither ptrace it nor open its /proc/<pid>/mem, fd/ or
  environ: it cannot read the tests or write to the verdict pipe. It can kill
  the harness, which yields no verdicts (reward 0), never better ones.
- The tests are never written to disk: they arrive on stdin and are compiled in
  memory. Only the candidate files are written, to a fresh 0700 folder.
- Each call has a timeout (the worker is killed, the test fails), the run a
  budget; responses are capped; workers get address-space and file-size limits,
  and their stdin, stdout and stderr are /dev/null.
"""

from __future__ import annotations

import base64
import builtins
import datetime
import decimal
import importlib
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import unittest
from typing import Any, BinaryIO, Callable, Dict, List, NoReturn, Optional, Type, TypeVar

T = TypeVar("T")

#: Bytes of one worker response at most.
MAX_RESPONSE = 4 * 1024 * 1024
#: Nesting depth of encoded values at most.
MAX_DEPTH = 64
#: Address space (bytes) and largest file a worker may have or write.
WORKER_MEMORY = 512 * 1024 * 1024
WORKER_FILE_SIZE = 64 * 1024 * 1024


def _load_procfs() -> types.ModuleType:
    """The agent's `runtime/procfs.py`, loaded by path: this program runs with -I, without orsbox on sys.path."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime", "procfs.py")
    spec = importlib.util.spec_from_file_location("orsbox_procfs", path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


procfs = _load_procfs()


class CandidateFailure(BaseException):
    """The candidate code crashed, hung, or broke the protocol.

    A BaseException, so that `assertRaises(ValueError)` (or even `Exception`) in a test never mistakes
    a crash for the error it expects: unittest reports it as an error of that test.
    """


class CandidateTimeout(CandidateFailure):
    """A call into the candidate code did not answer in time."""


# ---------------------------------------------------------------- values across the pipe


def encode(value: Any, ref: Callable[[Any], Any], depth: int = 0) -> Any:
    """`value` as JSON data: plain types as they are, tuples/sets/dicts/Decimal/dates tagged, others `ref(value)`."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode(item, ref, depth + 1) for item in value]
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [encode(item, ref, depth + 1) for item in value]}
    if isinstance(value, (set, frozenset)):
        return {"t": "set", "v": [encode(item, ref, depth + 1) for item in value]}
    if isinstance(value, dict):
        return {"t": "dict", "v": [[encode(k, ref, depth + 1), encode(v, ref, depth + 1)] for k, v in value.items()]}
    if isinstance(value, decimal.Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, datetime.datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, (bytes, bytearray)):
        return {"t": "bytes", "v": bytes(value).hex()}
    return ref(value)


def decode(data: Any, resolve: Callable[[Dict[str, Any]], Any], depth: int = 0) -> Any:
    """The value `encode` made; handles (`{"t": "ref"}`) become `resolve(handle)`. Raises ValueError on bad data."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if isinstance(data, list):
        return [decode(item, resolve, depth + 1) for item in data]
    if not isinstance(data, dict):
        return data
    kind: Any = data.get("t")
    raw: Any = data.get("v")
    if kind == "ref":
        return resolve(data)
    if kind in ("tuple", "set", "dict") and not isinstance(raw, list):
        raise ValueError("bad %s" % kind)
    if kind == "tuple":
        return tuple(decode(item, resolve, depth + 1) for item in raw)
    if kind == "set":
        return {decode(item, resolve, depth + 1) for item in raw}
    if kind == "dict":
        return {decode(k, resolve, depth + 1): decode(v, resolve, depth + 1) for k, v in raw}
    if not isinstance(raw, str):
        raise ValueError("bad value of kind %r" % kind)
    scalars: Dict[Any, Callable[[str], Any]] = {
        "decimal": decimal.Decimal, "datetime": datetime.datetime.fromisoformat,
        "date": datetime.date.fromisoformat, "bytes": bytes.fromhex,
    }
    if kind not in scalars:
        raise ValueError("unknown kind %r" % kind)
    return scalars[kind](raw)


# ---------------------------------------------------------------- the harness side


class Config:
    """Where the candidate code is and how long it may take; set once per run."""

    def __init__(self, repo: str, call_timeout: float, budget: float, max_timeouts: int) -> None:
        self.repo = repo
        self.call_timeout = call_timeout
        self.deadline = time.monotonic() + budget
        self.max_timeouts = max_timeouts
        self.timeouts = 0
        self.env = {"PATH": "/usr/bin:/bin", "LC_CTYPE": "C.UTF-8", "HOME": repo}

    @property
    def exhausted(self) -> bool:
        return self.timeouts >= self.max_timeouts or time.monotonic() >= self.deadline


CONFIG: Optional[Config] = None


class Remote:
    """A candidate object living in the worker: attributes, calls and the container protocols are forwarded."""

    __slots__ = ("_id", "_type", "_worker")

    def __init__(self, worker: Worker, ref_id: int, type_name: str) -> None:
        self._worker = worker
        self._id = ref_id
        self._type = type_name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends stay here
            raise AttributeError(name)
        return self._worker.request("getattr", self, name=name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._worker.request("call", self, args=list(args), kwargs=kwargs)

    def __len__(self) -> int:
        return _checked(self._worker.request("len", self), int)

    def __bool__(self) -> bool:
        return _checked(self._worker.request("bool", self), bool)

    def __str__(self) -> str:
        return _checked(self._worker.request("str", self), str)

    def __iter__(self) -> Any:
        return iter(_checked(self._worker.request("list", self), list))

    def __contains__(self, item: Any) -> bool:
        return _checked(self._worker.request("contains", self, args=[item]), bool)

    def __getitem__(self, key: Any) -> Any:
        return self._worker.request("getitem", self, args=[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._worker.request("setitem", self, args=[key, value])

    def __delitem__(self, key: Any) -> None:
        self._worker.request("delitem", self, args=[key])

    def __repr__(self) -> str:
        return "<candidate %s #%d>" % (self._type, self._id)


def _checked(value: Any, kind: Type[T]) -> T:
    if not isinstance(value, kind):
        raise CandidateFailure("expected %s from the candidate, got %s" % (kind.__name__, type(value).__name__))
    return value


class Worker:
    """One worker process importing the candidate code; requests are answered one line each."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dead: Optional[str] = None
        self._stopped = False
        self.modules: Dict[str, Any] = {}
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", os.path.abspath(__file__), "worker", config.repo],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=config.repo, env=config.env, start_new_session=True, close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._in, False)

    def import_module(self, name: str) -> Any:
        """The candidate module `name`; an import that fails is a CandidateFailure, whatever it raised."""
        if name not in self.modules:
            try:
                self.modules[name] = self.request("import", None, name=name)
            except CandidateFailure:
                raise
            except BaseException as exc:
                raise CandidateFailure("importing %s raised %s" % (name, exc)) from None
        return self.modules[name]

    def request(self, op: str, target: Optional[Remote], **fields: Any) -> Any:
        """Run `op` on `target` in the worker; its result, or the exception it raised, here."""
        message = {"op": op, "target": None if target is None else target._id}
        for key, value in fields.items():
            message[key] = encode(value, self._handle)
        response = self._exchange(json.dumps(message).encode() + b"\n")
        if "ok" in response:
            try:
                return decode(response["ok"], self._remote)
            except (ValueError, TypeError, RecursionError) as exc:
                self._fail("undecodable result: %s" % exc)
        raise _exception(response)

    def _handle(self, value: Any) -> Any:
        if isinstance(value, Remote) and value._worker is self:
            return {"t": "ref", "v": value._id}
        raise TypeError("cannot send a %s to the candidate" % type(value).__name__)

    def _remote(self, handle: Dict[str, Any]) -> Remote:
        if not isinstance(handle.get("v"), int):
            raise ValueError("bad handle")
        return Remote(self, handle["v"], str(handle.get("type", "object"))[:100])

    def _exchange(self, data: bytes) -> Dict[str, Any]:
        if self.dead is not None:
            raise CandidateFailure(self.dead)
        deadline = min(time.monotonic() + self.config.call_timeout, self.config.deadline)
        self._send(data, deadline)
        line = self._receive(deadline)
        try:
            response = json.loads(line)
        except (ValueError, RecursionError):
            response = None
        if not isinstance(response, dict):
            self._fail("the candidate broke the protocol")
        return response

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self._in, deadline, writing=True)
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                continue
            except OSError:
                self._fail("the candidate's process ended")

    def _receive(self, deadline: float) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_RESPONSE:
                self._fail("the candidate's answer is too long")
            self._wait(self._out, deadline, writing=False)
            chunk = os.read(self._out, 65536)
            if not chunk:
                self._fail("the candidate's process ended")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _wait(self, fd: int, deadline: float, writing: bool) -> None:
        remaining = deadline - time.monotonic()
        ready = select.select([], [fd], [], max(remaining, 0))[1] if writing else \
            select.select([fd], [], [], max(remaining, 0))[0]
        if not ready:
            self.config.timeouts += 1
            self._fail("the candidate did not answer within %.0f s" % self.config.call_timeout, CandidateTimeout)

    def _fail(self, why: str, kind: Type[CandidateFailure] = CandidateFailure) -> NoReturn:
        self.dead = why
        self.stop()
        raise kind(why)

    def stop(self) -> None:
        """Kill the worker and everything else of this uid but the harness (detached children included)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_my_other_processes()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass


def _exception(response: Dict[str, Any]) -> BaseException:
    """The exception the candidate raised, as the first built-in Exception class in its class's MRO."""
    names = response.get("raise")
    message = str(response.get("message", ""))[:1000]
    if not isinstance(names, list):
        return CandidateFailure("the candidate broke the protocol")
    for name in names:
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                return kind(message)
            except Exception:  # a class that wants other arguments (UnicodeDecodeError): try its bases
                continue
    return CandidateFailure("the candidate raised %s: %s" % (names[:1], message))


def kill_my_other_processes(rounds: int = 50) -> None:
    """SIGKILL every process of this uid except this one, until none is left."""
    procfs.kill_processes(os.getuid(), rounds=rounds, spare_pids=(os.getpid(),))


class CandidateTestCase(unittest.TestCase):
    """Base class of hidden tests: a fresh worker per test; `self.mod` is the candidate module `module`."""

    module = ""

    def setUp(self) -> None:
        assert CONFIG is not None, "hidden tests run under the harness only"
        self.worker = Worker(CONFIG)
        self.addCleanup(self.worker.stop)

    @property
    def mod(self) -> Any:
        return self.import_module(self.module)

    def import_module(self, name: str) -> Any:
        """Another candidate module, imported in this test's worker."""
        return self.worker.import_module(name)


def load_tests_from(tests: Dict[str, str]) -> List[unittest.TestCase]:
    """Every test of the files `tests` ({name: source}), compiled in memory; a broken file loads none."""
    sys.modules.setdefault("grading_harness", sys.modules[__name__])
    cases: List[unittest.TestCase] = []
    for name, source in sorted(tests.items()):
        stem = name[:-3] if name.endswith(".py") else name
        module = types.ModuleType(stem)
        try:
            exec(compile(source, "<hidden %s>" % name, "exec"), module.__dict__)
        except Exception:
            continue
        cases += _flatten(unittest.defaultTestLoader.loadTestsFromModule(module))
    return cases


def _flatten(suite: Any) -> List[unittest.TestCase]:
    if isinstance(suite, unittest.TestCase):
        return [suite]
    return [case for item in suite for case in _flatten(item)]


def run_test(test: unittest.TestCase, config: Config) -> str:
    """Run one test; its outcome (see hidden_tests.OUTCOMES)."""
    if config.exhausted:
        return "not_run"
    timeouts = config.timeouts
    result = unittest.TestResult()
    test.run(result)
    if config.timeouts > timeouts:
        return "timeout"
    if result.skipped:
        return "skipped"
    if result.errors:
        return "error"
    if result.failures or result.expectedFailures or result.unexpectedSuccesses or result.testsRun != 1:
        return "failed"
    return "passed"


def write_candidate(repo: str, files: Dict[str, str]) -> None:
    """The candidate's files ({relative path: base64}) under `repo`; paths that leave it are skipped."""
    for rel, data in sorted(files.items()):
        path = os.path.normpath(os.path.join(repo, rel))
        if os.path.isabs(rel) or not path.startswith(repo + os.sep):
            continue
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))


def harness_main() -> int:
    """Read the payload, run every test against the candidate, print the verdicts."""
    global CONFIG
    if os.getuid() == 0:  # it kills every other process of its uid
        sys.exit("the harness must run as its own unprivileged uid")
    procfs.make_non_dumpable()  # before anything secret arrives: the workers (this uid) cannot reach into it
    try:
        with open("/proc/self/oom_score_adj", "w") as f:  # the memory killer takes graders before the agent
            f.write("1000")
    except OSError:
        pass
    payload = json.loads(sys.stdin.buffer.read())
    workdir = tempfile.mkdtemp(prefix="orsbox-grader-", dir="/tmp")  # 0700, this uid's
    repo = os.path.join(workdir, "repo")
    os.mkdir(repo, 0o700)
    try:
        write_candidate(repo, payload["files"])
        CONFIG = config = Config(repo, float(payload["call_timeout"]), float(payload["budget"]),
                                 int(payload["max_timeouts"]))
        outcomes = {test.id(): run_test(test, config) for test in load_tests_from(payload["tests"])}
    finally:
        kill_my_other_processes()
        shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write(json.dumps({"outcomes": outcomes}) + "\n")
    return 0


# ---------------------------------------------------------------- the worker side


class Objects:
    """The worker's table of objects the harness holds handles to."""

    def __init__(self) -> None:
        self.table: Dict[int, Any] = {}

    def ref(self, value: Any) -> Dict[str, Any]:
        ref_id = len(self.table) + 1
        self.table[ref_id] = value
        return {"t": "ref", "v": ref_id, "type": type(value).__name__}

    def resolve(self, handle: Dict[str, Any]) -> Any:
        return self.table[handle["v"]]


def _apply(op: str, target: Any, request: Dict[str, Any], objects: Objects) -> Any:
    args = decode(request.get("args", []), objects.resolve)
    if op == "import":
        return importlib.import_module(str(request["name"]))
    if op == "getattr":
        return getattr(target, str(request["name"]))
    if op == "call":
        return target(*args, **decode(request.get("kwargs", {}), objects.resolve))
    simple: Dict[str, Callable[[], Any]] = {
        "len": lambda: len(target), "bool": lambda: bool(target), "str": lambda: str(target),
        "list": lambda: list(target), "contains": lambda: args[0] in target,
        "getitem": lambda: target[args[0]],
    }
    if op in simple:
        return simple[op]()
    if op == "setitem":
        target[args[0]] = args[1]
    elif op == "delitem":
        del target[args[0]]
    else:
        raise ValueError("unknown op %r" % op)
    return None


def worker_main(repo: str) -> int:
    """Answer the harness's requests against the candidate code in `repo`, one JSON line each."""
    import resource

    requests = os.fdopen(os.dup(0), "rb")
    answers: BinaryIO = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # sys.stdin, stdout and stderr now read nothing, and whatever the candidate prints is lost
        os.dup2(null, fd)
    for limit, value in ((resource.RLIMIT_AS, WORKER_MEMORY), (resource.RLIMIT_FSIZE, WORKER_FILE_SIZE),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    sys.path.insert(0, repo)  # only now: the worker's own modules above are the standard library's
    objects = Objects()
    for line in requests:
        request = json.loads(line)
        try:
            target = None if request.get("target") is None else objects.table[request["target"]]
            response: Dict[str, Any] = {"ok": encode(_apply(request["op"], target, request, objects), objects.ref)}
        except BaseException as exc:  # SystemExit from the candidate included: it is reported, not obeyed
            response = {"raise": [k.__name__ for k in type(exc).__mro__], "message": _message(exc)}
        answers.write(json.dumps(response).encode() + b"\n")
        answers.flush()
    return 0


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:1000]
    except BaseException:
        return ""


if __name__ == "__main__":
    if sys.argv[1:2] == ["harness"]:
        sys.exit(harness_main())
    if sys.argv[1:2] == ["worker"] and len(sys.argv) == 3:
        sys.exit(worker_main(sys.argv[2]))
    sys.exit("usage: grading_harness.py harness | worker DIR")
