"""Running things on the host for a build: scratch folders and subprocesses (debootstrap, tar, pip)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from ..errors import ImageBuildError

#: Scratch folders (a root file system, a copy of a build context) are made here: on disk, not tmpfs.
WORK_ROOT = "/var/tmp"
#: Lines of a failed command's output quoted in its error.
LOG_TAIL_LINES = 25


def scratch_dir(prefix: str) -> Path:
    """A new, empty folder under WORK_ROOT; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=WORK_ROOT))


def run(argv: Sequence[str], what: str) -> None:
    """Run a short command; raise ImageBuildError with its output if it fails."""
    done = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
        raise ImageBuildError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n" + "\n".join(output)
        )


def run_streaming(argv: Sequence[str], cwd: Path, env: Mapping[str, str],
                  line_out: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run *argv* in *cwd*, passing each output line on; its exit code and last lines."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    # Its own process group, so an interrupted build also stops what it started.
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                tail.append(line)
                line_out(line)
        return proc.wait(), list(tail)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Make sure *proc* and its process group have ended (after an interrupt they run on)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last *lines* lines of a text file (none if it is missing)."""
    try:
        with path.open(errors="replace") as handle:
            return list(deque((line.rstrip("\n") for line in handle), maxlen=lines))
    except OSError:
        return []
