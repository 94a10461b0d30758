"""Processes by uid, and keeping a process out of its own uid's reach: shared by the agent and the grading harness.

Stdlib only, Python 3.8+, and nothing imported from orsbox: the grading harness is a
separate program (`grading/grading_harness.py`, run with `-I`) and loads this file by path.
"""

import errno
import os
import signal
import sys
import time
from typing import Callable, Iterable, List, Optional

PR_SET_DUMPABLE = 4


def make_non_dumpable() -> None:
    """No core dumps, and no ptrace, /proc/<pid>/mem, fd/ or environ access by other processes of this uid."""
    import ctypes  # here: the harness's workers load this module too, and never call this

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def user_pids(uid: int) -> List[int]:
    """Live (non-zombie) processes with `uid` as any of their uids."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _is_of(int(entry), uid)]


def _is_of(pid: int, uid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process with `uid` as any of its uids."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return not fields.get("State", "").strip().startswith("Z") and str(uid) in fields.get("Uid", "").split()


def kill_processes(uid: int, *, rounds: int = 200, spare_groups: Iterable[int] = (),
                   spare_pids: Iterable[int] = ()) -> bool:
    """SIGKILL every process of `uid` but `spare_pids` and those in `spare_groups`, until none is left.

    Repeats, so that what a process forks while being killed (a fork bomb) goes too; whether none is left.
    """
    groups, keep = set(spare_groups), set(spare_pids)

    def spared(pid: int) -> bool:
        return pid in keep or (bool(groups) and _group_of(pid) in groups)

    def doomed() -> List[int]:
        return [pid for pid in user_pids(uid) if not spared(pid)]

    def still_doomed(pid: int) -> bool:  # asked again just before the signal
        return _is_of(pid, uid) and not spared(pid)

    for _ in range(rounds):
        pids = doomed()
        if not pids:
            return True
        for pid in pids:
            _kill(pid, still_doomed)
        time.sleep(0.002)
    return not doomed()


def _kill(pid: int, still_doomed: Callable[[int], bool]) -> None:
    """SIGKILL `pid` if `still_doomed(pid)` holds when it is signalled.

    The agent may signal any process (CAP_KILL), and a pid listed a moment ago may since have been freed
    and reused by another process, or by a thread of the agent. Where the kernel has pidfds (Linux 5.3+,
    Python 3.9+) the process is pinned first, checked again, then signalled through the pidfd: a reused
    pid is never hit. Elsewhere (gVisor, Python 3.8) a plain kill.
    """
    if sys.version_info >= (3, 9):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT, errno.EINVAL):  # gone, or not a process (a thread id)
                return
        else:
            try:
                if still_doomed(pid):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_of(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
