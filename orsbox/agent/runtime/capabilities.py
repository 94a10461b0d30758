"""The agent's capabilities: it keeps the three it uses, and nothing it starts can ever get one back.

Docker gives the agent (root in the container) SETUID, SETGID, KILL and SETPCAP. `confine()` runs
first thing in `__main__`, before the agent has a second thread or any child, and:

- empties the capability bounding set: `prctl(PR_CAPBSET_DROP)` for every capability the kernel knows
  (up to `/proc/sys/kernel/cap_last_cap`, found with `PR_CAPBSET_READ`, which fails past the last:
  gVisor has no such file), which needs SETPCAP;
- clears the ambient set (gVisor has none: EINVAL there);
- keeps SETUID, SETGID and KILL permitted and effective, and nothing inheritable: SETPCAP goes.

Capabilities belong to each thread and are inherited by fork: every thread the agent starts later
and every process they fork start from this, so a command gets its empty bounding set without any
code running in the child between fork and exec (on Python 3.9+ `subprocess` drops to the command
user in C, `user=`; on 3.8 in a `preexec_fn` of three syscalls). Its setuid to a non-root uid clears
its permitted and effective sets, and with empty bounding, inheritable and ambient sets no execve can
give a capability back: not a root one, nor a setuid-root or file-capability binary were
`no-new-privileges` missing.

`confine()` also refuses to run where the kernel would let other processes of the command user trace
the agent's child between its setuid and its exec (`fs.suid_dumpable` = 1): that child still holds a
copy of the agent's memory (task data, secrets).
"""

import ctypes
import errno
import os
from typing import Iterable, List, NoReturn, Tuple

# linux/capability.h
CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 5, 6, 7, 8
#: What the agent keeps: dropping to the command user (and grader uids), and killing what they leave behind.
AGENT_CAPABILITIES = (CAP_SETUID, CAP_SETGID, CAP_KILL)

# linux/prctl.h
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: 0: a process that changed uid is not dumpable; 2: dumpable by root only; 1: by its uid (unsafe here).
SUID_DUMPABLE = "/proc/sys/fs/suid_dumpable"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


Sets = Tuple[int, int, int]  # effective, permitted, inheritable, as 64-bit masks


def confine(keep: Iterable[int] = AGENT_CAPABILITIES) -> None:
    """Empty the bounding and ambient sets, keep only `keep` (of what this thread has); see the module.

    An agent without capabilities (run unprivileged, outside a container) has nothing to give away and
    changes nothing. Raises OSError if a step fails (SETPCAP not granted), RuntimeError if the result is
    not what was asked or `fs.suid_dumpable` is 1.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _, permitted, _ = capabilities(libc)
    if not permitted:
        return
    if len(os.listdir("/proc/self/task")) != 1:
        raise RuntimeError("capabilities.confine() must run before the agent starts a thread: each keeps its own")
    _refuse_dumpable_children()
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
        _fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    for cap in bounding_set(libc):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            _fail("prctl(PR_CAPBSET_DROP, %d) (the container needs cap_add SETPCAP)" % cap)
    kept = sum(1 << cap for cap in keep) & permitted
    _set_capabilities(libc, (kept, kept, 0))
    if bounding_set(libc) or capabilities(libc) != (kept, kept, 0):
        raise RuntimeError("the agent's capabilities are not what it set: bounding %r, (eff, prm, inh) %r"
                           % (bounding_set(libc), capabilities(libc)))


def bounding_set(libc: ctypes.CDLL) -> Tuple[int, ...]:
    """The capabilities still in this thread's bounding set."""
    held: List[int] = []
    for cap in range(64):  # the sets are 64 bits
        answer = libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
        if answer < 0:  # EINVAL: past the kernel's last capability
            break
        if answer == 1:
            held.append(cap)
    return tuple(held)


def capabilities(libc: ctypes.CDLL) -> Sets:
    """This thread's (effective, permitted, inheritable) sets."""
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        _fail("capget")
    low, high = data[0], data[1]
    return (low.effective | high.effective << 32, low.permitted | high.permitted << 32,
            low.inheritable | high.inheritable << 32)


def _set_capabilities(libc: ctypes.CDLL, sets: Sets) -> None:
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    for half in (0, 1):
        data[half].effective, data[half].permitted, data[half].inheritable = (
            (mask >> (32 * half)) & 0xFFFFFFFF for mask in sets)
    if libc.capset(ctypes.byref(header), data) != 0:
        _fail("capset")


def _refuse_dumpable_children() -> None:
    try:
        with open(SUID_DUMPABLE) as f:
            setting = f.read().strip()
    except OSError:  # gVisor: no such setting; its kernel makes a process that changed uid non-dumpable
        return
    if setting == "1":
        raise RuntimeError("fs.suid_dumpable is 1 on this host: the command user could trace the agent's children "
                           "between their setuid and exec, and read the agent's memory in them; set it to 0 "
                           "(sysctl -w fs.suid_dumpable=0) or 2")


def _fail(what: str) -> NoReturn:
    code = ctypes.get_errno()
    raise OSError(code, "%s failed: %s" % (what, errno.errorcode.get(code, code)))
