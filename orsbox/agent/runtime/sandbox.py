"""Sandbox mode: the agent's side of openreward's sandbox API (`/run`, `/stat_file`, `/read_file`, `/write_file`).

A sandbox is a container of any image, with the agent started as
`python3 -m orsbox.agent serve --entrypoint sandbox --limits ...` (`wire.SANDBOX_ENTRYPOINT`):
no Environment, only these methods. `setup` takes `{"task": {}, "secrets": {...},
"sandbox": {"env": {K: V}, "workdir": str | None}}`: the secrets are not kept, the variables are added
to every command's environment, and the sandbox is ready. `hello` also reports
`"sandbox": {"workdir", "output_cap", "max_read", "max_timeout"}` (bytes, bytes, bytes, s).

- `sandbox_run` `{"cmd", "timeout_s", "max_bytes", "shell"}`: every run is a fresh `shell` as the
  command user (the policy's uid and gid, no supplementary groups), in its own session and process
  group, in the sandbox's workdir, with the command user's clean environment plus the sandbox's
  variables. `cmd` (up to `wire.MAX_SANDBOX_CMD_BYTES`) is never an argument (Linux caps one at
  128 KiB): the shell is started as `shell -c 'eval "$(command -p cat)" </dev/null'` with `cmd` on
  its stdin, so it runs as `shell -c cmd` would, and its commands read /dev/null. stdout and stderr
  are one pipe (their order kept); the first `max_bytes` bytes are kept, the rest read and dropped.
  `max_bytes` is at most the policy's output cap (null: the cap), and the answer says which cap
  applied. `timeout_s` is at most the policy's longest command time (null: that time); past it the
  process group is killed, the output so far kept, `return_code` 124 and `timed_out` true. A signal
  gives 128 + its number. Runs may go on at once; nothing of a run is killed once its shell exited (a
  `nohup ... > log &` server lives on), but its output is read only until `DRAIN` s after that exit.
  Teardown kills every process of the command user.
- `sandbox_stat`, `sandbox_read`, `sandbox_write`, `sandbox_commit`: regular files at absolute paths,
  with exactly the command user's permissions. They run in threads that took its identity for
  themselves (raw `setgroups`, `setresgid`, `setresuid` syscalls for the euid/egid, which are per
  thread in the kernel; glibc's wrappers would change every thread of the agent), so the kernel
  checks every access as it would for the user's own commands, and files and folders they create are
  the user's. A symlink as the last component is refused (its message says "symlink"), never followed.
  A write puts its chunk at its offset (pwrite: a retried chunk lands where it did) in
  `.<name>.orsbox-upload` next to the destination (offset 0 starts it afresh); the commit checks its
  size, fsyncs and hashes it, gives it the mode of the file it replaces, and renames it over the
  destination. Hashing and copying run in those threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import errno
import functools
import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Dict, Iterator, Optional, Tuple, TypeVar

from .. import wire
from ..layout import WORKSPACE
from ..wire import ErrorType, Method, WireError
from .processes import Runner, _feed, _kill_group, _pump, oom_killed_since, oom_kills

#: The shell of a run unless the call names one.
DEFAULT_SHELL = "/bin/bash"
#: What the shell runs: the command read from its stdin (a pipe) to its end, then run as `-c` would, stdin /dev/null.
SCRIPT_READER = 'eval "$(command -p cat)" </dev/null'
#: How long a run's output is still read once its shell exited or was killed (s): background jobs may hold the pipe.
DRAIN = 2.0
#: Exit status of a run that timed out (coreutils' `timeout`).
TIMED_OUT = 124
#: Room in an answer frame for everything but the base64 data (bytes).
FRAME_MARGIN = 64 * 1024
#: Most bytes one `sandbox_read` returns, whatever the frame limit allows.
MAX_READ = 4 * 1024 * 1024
#: Threads doing file operations as the command user, and the pieces they hash and copy in (bytes).
FILE_THREADS = 4
HASH_CHUNK = 1024 * 1024
#: The temporary file of an upload: `.<name><suffix>` next to the destination.
UPLOAD_SUFFIX = ".orsbox-upload"
NAME_MAX = 255  # bytes in one path component (Linux)

Handler = Callable[[Dict[str, Any]], Awaitable[Any]]
T = TypeVar("T")


class Shell:
    """A run's shell, started and waiting for its script on a pipe (its output goes to another)."""

    def __init__(self, path: str, proc: "asyncio.subprocess.Process", output_read: int, script_write: int) -> None:
        self.path, self.proc = path, proc
        self.output_read, self.script_write = output_read, script_write

    def discard(self) -> None:
        """An unused spare: killed, its pipes closed."""
        if self.proc.returncode is None:
            _kill_group(self.proc.pid)
        for fd in (self.output_read, self.script_write):
            try:
                os.close(fd)
            except OSError:
                pass


class Sandbox:
    """One sandbox's state (its variables and workdir) and its wire methods."""

    def __init__(self, runner: Runner, *, enabled: bool) -> None:
        self.runner = runner
        self.enabled = enabled  # the agent was started with `--entrypoint sandbox`
        self.env: Dict[str, str] = {}
        self.workdir = default_workdir()
        self.files: Optional[FileUser] = None  # set by configure, dropped by close
        # Starting a shell costs tens of ms where exec is slow (fuse-overlayfs): one is kept started ahead,
        # with the sandbox's fixed env and workdir, for the next run to take.
        self._spare: Optional[Shell] = None
        self._spare_task: "Optional[asyncio.Future[None]]" = None

    def handlers(self) -> Dict[str, Handler]:
        return {
            Method.SANDBOX_RUN: self.run,
            Method.SANDBOX_STAT: self.stat,
            Method.SANDBOX_READ: self.read,
            Method.SANDBOX_WRITE: self.write,
            Method.SANDBOX_COMMIT: self.commit,
        }

    def configure(self, params: Any) -> None:
        """Take `setup`'s `sandbox` object; raises ValueError for a malformed one."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ValueError("sandbox must be an object")
        env = params.get("env") or {}
        if not isinstance(env, dict):
            raise ValueError("sandbox.env must be an object of strings")
        for name, value in env.items():
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise ValueError("sandbox.env: %r is not a variable name" % (name,))
            if not isinstance(value, str) or "\0" in value:
                raise ValueError("sandbox.env: the value of %s is not a string without NUL" % name)
        workdir = params.get("workdir")
        if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir):
            raise ValueError("sandbox.workdir must be an absolute path")
        self.env = dict(env)
        self.workdir = workdir or self.workdir
        limits = self.runner.limits
        self.files = FileUser(limits.uid, limits.gid)

    def hello(self) -> Dict[str, Any]:
        """What `hello` adds in sandbox mode."""
        if not self.enabled:
            return {}
        return {"sandbox": {"workdir": self.workdir, "output_cap": self.output_limit(None),
                            "max_read": self.max_read(), "max_timeout": self.runner.limits.max_timeout}}

    def close(self) -> None:
        files, self.files = self.files, None
        if files is not None:
            files.close()
        if self._spare_task is not None:
            self._spare_task.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()

    def _ready(self) -> FileUser:
        if not self.enabled:
            raise WireError(ErrorType.BAD_REQUEST, "this agent serves an environment, not a sandbox")
        if self.files is None:
            raise WireError(ErrorType.NOT_SET_UP, "the sandbox is not set up")
        return self.files

    # -- limits ----------------------------------------------------------------

    def output_limit(self, requested: Optional[int]) -> int:
        """Bytes of output a run returns: `requested`, at most the output cap and what an answer frame holds."""
        cap = self.runner.limits.output_cap
        fits = (wire.frame_limit(cap) - FRAME_MARGIN) * 3 // 4  # base64 is 4/3 of the data
        limit = max(0, min(cap, fits))
        return limit if requested is None else min(requested, limit)

    def max_read(self) -> int:
        """Bytes one `sandbox_read` returns at most: what an answer frame holds, and MAX_READ."""
        return max(0, min(MAX_READ, (wire.frame_limit(self.runner.limits.output_cap) - FRAME_MARGIN) * 3 // 4))

    def time_limit(self, requested: Optional[float]) -> float:
        """Seconds a run may take: `requested` (None: no deadline of its own), at most the policy's longest."""
        return self.runner.limits.max_timeout if requested is None else self.runner.time_limit(requested)

    # -- commands --------------------------------------------------------------

    async def run(self, params: Dict[str, Any]) -> Dict[str, Any]:
        self._ready()
        cmd = params.get("cmd")
        if not isinstance(cmd, str):
            raise WireError(ErrorType.BAD_REQUEST, "sandbox_run needs a string 'cmd'")
        shell = params.get("shell") or DEFAULT_SHELL
        if not isinstance(shell, str) or "\0" in shell:
            raise WireError(ErrorType.BAD_REQUEST, "'shell' must be a path")
        script = _encode(cmd)
        if len(script) > wire.MAX_SANDBOX_CMD_BYTES:
            raise WireError(ErrorType.BAD_REQUEST, "cmd has %d bytes; at most %d are run"
                            % (len(script), wire.MAX_SANDBOX_CMD_BYTES))
        limit = self.output_limit(_int(params, "max_bytes"))
        seconds = self.time_limit(_number(params, "timeout_s"))
        head = OutputHead(limit)
        kills_before = oom_kills()
        exit_code, timed_out = await self._run(shell, script, head, seconds)
        return {
            "output": base64.b64encode(bytes(head.data)).decode("ascii"),
            "return_code": TIMED_OUT if timed_out else _status(exit_code),
            "timed_out": timed_out,
            "oom_killed": bool(oom_killed_since(kills_before)),
            "total_bytes": head.total,  # bytes the command wrote; more than it returned: cut at max_bytes
            "max_bytes": limit,  # the cap applied: the request's, or less (the output cap, the frame limit)
        }

    async def _start_shell(self, path: str) -> Shell:
        """A shell as the command user in its own session, reading its script from a pipe."""
        output_read, output_write = os.pipe()
        script_read, script_write = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                path, "-c", SCRIPT_READER,
                stdin=script_read, stdout=output_write, stderr=output_write,
                cwd=self.workdir, env=self.command_env(), start_new_session=True,
                **self.runner.drop_privileges(),
            )
        except BaseException as exc:
            os.close(output_read)
            os.close(script_write)
            if isinstance(exc, OSError):
                raise WireError(ErrorType.BAD_REQUEST, "cannot start %s in %s: %s"
                                % (path, self.workdir, exc.strerror or exc)) from None
            raise
        finally:
            os.close(output_write)
            os.close(script_read)
        return Shell(path, proc, output_read, script_write)

    async def _shell(self, path: str) -> Shell:
        """The spare shell if it is one of `path` and still waiting, else a new one; a spare is made for next."""
        spare, self._spare = self._spare, None
        if spare is not None and (spare.path != path or spare.proc.returncode is not None):
            spare.discard()
            spare = None
        shell = spare or await self._start_shell(path)
        if self._spare_task is None or self._spare_task.done():
            self._spare_task = asyncio.ensure_future(self._make_spare(path))
        return shell

    async def _make_spare(self, path: str) -> None:
        try:
            shell = await self._start_shell(path)
        except Exception:  # the run that needs it starts its own, and reports why it cannot
            return
        if self._spare is not None or self.files is None:  # another was made meanwhile, or the sandbox closed
            shell.discard()
        else:
            self._spare = shell

    async def _run(self, shell_path: str, script: bytes, head: OutputHead,
                   seconds: float) -> Tuple[Optional[int], bool]:
        """Run `script` with its shell until it exits or `seconds` pass (then kill its group); exit code, timed out."""
        shell = await self._shell(shell_path)
        proc = shell.proc
        pump = asyncio.ensure_future(_pump(shell.output_read, head))
        feeder = asyncio.ensure_future(_feed(shell.script_write, script))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            if timed_out or proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
        _, pending = await asyncio.wait([pump, feeder], timeout=DRAIN)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        if not pump.cancelled():
            pump.result()  # a pump that failed fails the run
        return proc.returncode, timed_out

    def command_env(self) -> Dict[str, str]:
        """The command user's clean environment, the sandbox's variables over it; BASH_ENV and PWD stay the agent's."""
        env = self.runner.command_env(self.workdir)
        fixed = {name: env[name] for name in ("BASH_ENV", "PWD")}
        env.update(self.env)
        env.update(fixed)
        return env

    # -- files -----------------------------------------------------------------

    async def stat(self, params: Dict[str, Any]) -> Dict[str, Any]:
        files = self._ready()
        return await files.call(stat_file, _path(params), bool(params.get("sha256")))

    async def read(self, params: Dict[str, Any]) -> Dict[str, Any]:
        files = self._ready()
        offset, length = _int(params, "offset") or 0, _int(params, "length")
        length = self.max_read() if length is None else min(length, self.max_read())
        return await files.call(read_file, _path(params), offset, length)

    async def write(self, params: Dict[str, Any]) -> Dict[str, Any]:
        files = self._ready()
        data = params.get("data", "")
        if not isinstance(data, str):
            raise WireError(ErrorType.BAD_REQUEST, "'data' must be base64")
        return await files.call(write_chunk, _path(params), _int(params, "offset") or 0, data,
                                bool(params.get("mkdirs")))

    async def commit(self, params: Dict[str, Any]) -> Dict[str, Any]:
        files = self._ready()
        size = _int(params, "size")
        if size is None:
            raise WireError(ErrorType.BAD_REQUEST, "sandbox_commit needs an integer 'size'")
        return await files.call(commit_upload, _path(params), size)


class OutputHead:
    """Keeps the first `cap` bytes of a stream and counts them all."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += data[:room]
        self.total += len(data)


def default_workdir() -> str:
    """Where runs start unless setup names a folder: the agent's own (the image's WORKDIR), else /workspace."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    if cwd == "/" and os.path.isdir(WORKSPACE):
        return WORKSPACE
    return cwd


# ---------------------------------------------------------------- the command user's file identity


class FileUser:
    """Threads whose file-system identity is the command user's: euid/egid its uid/gid, no supplementary groups.

    Nothing else ever runs in them. Every call checks the thread's identity first, so a thread that
    could not take it (or lost it: glibc's set*id wrappers broadcast to every thread) does nothing.
    """

    def __init__(self, uid: int, gid: int, threads: int = FILE_THREADS) -> None:
        self.uid, self.gid = uid, gid
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="orsbox-files",
                                        initializer=self._take_identity)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in one of the threads, as the command user."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self._as_user, fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _take_identity(self) -> None:
        try:
            become_user(self.uid, self.gid)
        except OSError as exc:
            self._local.problem = str(exc)

    def _as_user(self, fn: Callable[..., T], *args: Any) -> T:
        problem = getattr(self._local, "problem", None) or identity_problem(self.uid, self.gid)
        if problem:
            raise WireError(ErrorType.INTERNAL, "file operations cannot run as the command user: %s" % problem)
        return fn(*args)


#: Raw syscall numbers (setgroups, setresgid, setresuid) by machine and pointer size: the 32-bit uid variants.
SETID_SYSCALLS: Dict[Tuple[str, int], Tuple[int, int, int]] = {
    ("x86_64", 8): (116, 119, 117),
    ("x86_64", 4): (206, 210, 208),  # a 32-bit python on a 64-bit kernel: the i386 ABI
    ("i386", 4): (206, 210, 208),
    ("i686", 4): (206, 210, 208),
    ("aarch64", 8): (159, 149, 147),
    ("aarch64", 4): (206, 210, 208),  # the arm ABI
    ("armv7l", 4): (206, 210, 208),
    ("armv8l", 4): (206, 210, 208),
    ("riscv64", 8): (159, 149, 147),
    ("ppc64le", 8): (81, 169, 164),
    ("s390x", 8): (206, 210, 208),
}


def become_user(uid: int, gid: int) -> None:
    """Make the calling thread, and only it, `uid`/`gid` with no supplementary groups, for file access.

    The real and saved ids stay root's, so the command user cannot signal the thread; the euid
    leaving 0 clears the thread's effective capabilities. Raises OSError if any step fails.
    """
    numbers = SETID_SYSCALLS.get((os.uname().machine, ctypes.sizeof(ctypes.c_void_p)))
    if numbers is None:
        raise OSError(errno.ENOSYS, "no per-thread set*id syscall numbers known for %s" % os.uname().machine)
    setgroups, setresgid, setresuid = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    keep = ctypes.c_long(-1)
    for name, args in (("setgroups", (setgroups, ctypes.c_long(0), ctypes.c_void_p(None))),
                       ("setresgid", (setresgid, keep, ctypes.c_long(gid), keep)),
                       ("setresuid", (setresuid, keep, ctypes.c_long(uid), keep))):
        if libc.syscall(ctypes.c_long(args[0]), *args[1:]) != 0:
            code = ctypes.get_errno()
            raise OSError(code, "%s: %s" % (name, os.strerror(code)))
    problem = identity_problem(uid, gid)
    if problem:
        raise OSError(errno.EPERM, problem)


def identity_problem(uid: int, gid: int) -> Optional[str]:
    """Why the calling thread is not `uid`/`gid` without supplementary groups, or None (these read its own ids)."""
    euid, egid, groups = os.geteuid(), os.getegid(), os.getgroups()
    if euid != uid or egid != gid or groups:
        return "the thread is uid %d, gid %d, groups %s" % (euid, egid, groups)
    return None


# ---------------------------------------------------------------- file operations (in FileUser threads)


def stat_file(path: str, sha256: bool) -> Dict[str, Any]:
    with file_errors(path):
        info = _regular(path)
        if not sha256:
            return {"size": info.st_size}
        fd = _open_regular(path, os.O_RDONLY)
        try:
            return {"size": os.fstat(fd).st_size, "sha256": _hash(fd)}
        finally:
            os.close(fd)


def read_file(path: str, offset: int, length: int) -> Dict[str, Any]:
    with file_errors(path):
        _regular(path)
        fd = _open_regular(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if offset > size:
                raise WireError(ErrorType.OUT_OF_RANGE, "offset %d is past the end of %s (%d bytes)"
                                % (offset, path, size))
            data = bytearray()
            while len(data) < length:
                piece = os.pread(fd, length - len(data), offset + len(data))
                if not piece:
                    break
                data += piece
        finally:
            os.close(fd)
    return {"data": base64.b64encode(bytes(data)).decode("ascii"), "file_size": size}


def write_chunk(path: str, offset: int, data: str, mkdirs: bool) -> Dict[str, Any]:
    """Put `data` (base64) at `offset` of the upload's temporary file; offset 0 starts it afresh."""
    try:
        chunk = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(ErrorType.BAD_REQUEST, "'data' is not base64") from None
    parent, _ = _split(path)
    upload = upload_path(path)
    with file_errors(path):
        _destination_mode(path)
        if mkdirs:
            os.makedirs(parent, exist_ok=True)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(upload, flags | (os.O_CREAT | os.O_TRUNC if offset == 0 else 0), 0o666)
        except FileNotFoundError:
            if offset == 0:
                raise
            raise WireError(ErrorType.BAD_REQUEST, "nothing was written to %s yet: a write at offset %d needs one "
                            "at offset 0 first" % (path, offset)) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WireError(ErrorType.BAD_REQUEST, "%s is not a regular file" % upload)
            if offset > info.st_size:
                raise WireError(ErrorType.BAD_REQUEST, "a write at offset %d of %s leaves a gap: %d bytes were written"
                                % (offset, path, info.st_size))
            view = memoryview(chunk)
            while view:
                view = view[os.pwrite(fd, view, offset + len(chunk) - len(view)):]
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return {"size": size}


def commit_upload(path: str, size: int) -> Dict[str, Any]:
    """Check the upload's size, fsync and hash it, and rename it over `path`; its sha256.

    Committing again once done (a retried request) answers with the file's hash if it has `size` bytes.
    """
    upload = upload_path(path)
    with file_errors(path):
        mode = _destination_mode(path)
        try:
            fd = os.open(upload, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if mode is not None and os.lstat(path).st_size == size:
                fd = _open_regular(path, os.O_RDONLY)
                try:
                    return {"sha256": _hash(fd), "size": size}
                finally:
                    os.close(fd)
            raise WireError(ErrorType.BAD_REQUEST, "nothing was written to %s" % path) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WireError(ErrorType.BAD_REQUEST, "%s is not a regular file" % upload)
            if info.st_size != size:
                raise WireError(ErrorType.BAD_REQUEST, "%s has %d bytes written, not %d" % (path, info.st_size, size))
            os.fsync(fd)
            digest = _hash(fd)
            if mode is not None:
                os.fchmod(fd, stat.S_IMODE(mode) & 0o777)  # the replaced file's permissions (set-id bits never)
            os.rename(upload, path)
        finally:
            os.close(fd)
    return {"sha256": digest, "size": size}


def upload_path(path: str) -> str:
    """The temporary file of an upload to `path`: `.<name>.orsbox-upload` beside it (a digest if too long)."""
    parent, name = _split(path)
    temp = ".%s%s" % (name, UPLOAD_SUFFIX)
    if len(os.fsencode(temp)) > NAME_MAX:
        temp = ".%s%s" % (hashlib.sha256(os.fsencode(name)).hexdigest()[:32], UPLOAD_SUFFIX)
    return os.path.join(parent, temp)


def _split(path: str) -> Tuple[str, str]:
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise WireError(ErrorType.BAD_REQUEST, "%s does not name a file" % path)
    return parent, name


def _regular(path: str) -> os.stat_result:
    """`path`'s lstat, if it is a regular file (a symlink is refused, never followed)."""
    info = os.lstat(path)
    _refuse_unless_regular(path, info.st_mode)
    return info


def _destination_mode(path: str) -> Optional[int]:
    """The mode of the regular file an upload will replace, None if there is none; refuses anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise WireError(ErrorType.NOT_FOUND, "a parent of %s is not a directory" % path) from None
    _refuse_unless_regular(path, info.st_mode)
    return info.st_mode


def _refuse_unless_regular(path: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise WireError(ErrorType.BAD_REQUEST, "%s is a symlink; give the path it points to" % path)
    if stat.S_ISDIR(mode):
        raise WireError(ErrorType.BAD_REQUEST, "%s is a directory, not a regular file" % path)
    if not stat.S_ISREG(mode):
        raise WireError(ErrorType.BAD_REQUEST, "%s is not a regular file" % path)


def _open_regular(path: str, flags: int) -> int:
    """Open `path` without following a final symlink or blocking (a FIFO swapped in); refuses a non-regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _hash(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        piece = os.pread(fd, HASH_CHUNK, offset)
        if not piece:
            return digest.hexdigest()
        digest.update(piece)
        offset += len(piece)


#: errno -> (error type, what it means), for the sandbox's file methods.
FILE_ERRORS: Dict[int, Tuple[str, str]] = {
    errno.ENOENT: (ErrorType.NOT_FOUND, "no such file or directory"),
    errno.ENOTDIR: (ErrorType.NOT_FOUND, "a parent is not a directory"),
    errno.EACCES: (ErrorType.FORBIDDEN, "permission denied"),
    errno.EPERM: (ErrorType.FORBIDDEN, "operation not permitted"),
    errno.EROFS: (ErrorType.FORBIDDEN, "read-only file system"),
    errno.ELOOP: (ErrorType.BAD_REQUEST, "a symlink (not followed), or too many levels of symlinks"),
    errno.EISDIR: (ErrorType.BAD_REQUEST, "a directory, not a regular file"),
    errno.EEXIST: (ErrorType.BAD_REQUEST, "exists and is not a directory"),
    errno.ENAMETOOLONG: (ErrorType.BAD_REQUEST, "name too long"),
    errno.ENXIO: (ErrorType.BAD_REQUEST, "not a regular file"),
    errno.ENOSPC: (ErrorType.NO_SPACE, "no space left on device"),
    errno.EDQUOT: (ErrorType.NO_SPACE, "disk quota exceeded"),
    errno.EFBIG: (ErrorType.NO_SPACE, "file too large"),
}


@contextmanager
def file_errors(path: str) -> Iterator[None]:
    """Turns OSError (and a path that cannot be encoded) into the sandbox's WireErrors."""
    try:
        yield
    except OSError as exc:
        type_, meaning = FILE_ERRORS.get(exc.errno or 0, (ErrorType.IO_ERROR, exc.strerror or str(exc)))
        where = exc.filename if isinstance(exc.filename, str) else path
        raise WireError(type_, "%s: %s" % (where, meaning)) from None
    except ValueError as exc:  # a NUL byte, a lone surrogate
        raise WireError(ErrorType.BAD_REQUEST, "%r is not a usable path: %s" % (path, exc)) from None


# ---------------------------------------------------------------- parameters


def _path(params: Dict[str, Any]) -> str:
    path = params.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise WireError(ErrorType.BAD_REQUEST, "'path' must be an absolute path")
    if "\0" in path or len(path) > 4096:
        raise WireError(ErrorType.BAD_REQUEST, "'path' is not a usable path")
    return path


def _int(params: Dict[str, Any], name: str) -> Optional[int]:
    """A non-negative integer parameter, or None when absent or null."""
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise WireError(ErrorType.BAD_REQUEST, "%r must be a non-negative integer" % name)
    return value


def _number(params: Dict[str, Any], name: str) -> Optional[float]:
    value = params.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or value != value:  # not bool, not NaN
        raise WireError(ErrorType.BAD_REQUEST, "%r must be a number" % name)
    return float(value)


def _encode(cmd: str) -> bytes:
    """`cmd` as bytes: UTF-8, lone surrogates from undecodable bytes (surrogateescape) back to those bytes."""
    try:
        return cmd.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return cmd.encode("utf-8", "replace")


def _status(exit_code: Optional[int]) -> int:
    """A shell's exit status: killed by signal N is 128 + N."""
    if exit_code is None:
        return -1
    return 128 - exit_code if exit_code < 0 else exit_code
