"""Processes by uid, and keeping a process out of its own uid's reach: shared by the agent and the grading harness.

Stdlib only, Python 3.8+, and nothing imported from orsbox: the grading harness is a
separate program (`grading/grading_harness.py`, run with `-I`) and loads this file by path.
"""

import os
import signal
import time
from typing import Iterable, List, Optional

PR_SET_DUMPABLE = 4


def make_non_dumpable() -> None:
    """No core dumps, and no ptrace, /proc/<pid>/mem, fd/ or environ access by other processes of this uid."""
    import ctypes  # here: the harness's workers load this module too, and never call this

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def user_pids(uid: int) -> List[int]:
    """Live (non-zombie) processes with `uid` as any of their uids."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/status" % entry) as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if str(uid) in fields.get("Uid", "").split():
            pids.append(int(entry))
    return pids


def kill_processes(uid: int, *, rounds: int = 200, spare_groups: Iterable[int] = (),
                   spare_pids: Iterable[int] = ()) -> bool:
    """SIGKILL every process of `uid` but `spare_pids` and those in `spare_groups`, until none is left.

    Repeats, so that what a process forks while being killed (a fork bomb) goes too; whether none is left.
    """
    groups, keep = set(spare_groups), set(spare_pids)

    def doomed() -> List[int]:
        return [pid for pid in user_pids(uid) if pid not in keep and (not groups or _group_of(pid) not in groups)]

    for _ in range(rounds):
        pids = doomed()
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.002)
    return not doomed()


def _group_of(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
