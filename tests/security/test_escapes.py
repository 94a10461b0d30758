"""Ways out of the sandbox that a hostile command would try, and what it gets: nothing.

Each probe prints what it observed; the assertions read like the outcome table in the README.
Probes avoid `ls` and `stat`: Debian 12's runsc (gVisor 2022-12) refuses the statx flags of
coreutils 9.1 (EINVAL), which says nothing about isolation.
"""

from __future__ import annotations

import json

import docker
import pytest

from ..support.managed import session_containers
from ..support.ors import Ors
from .conftest import AGENT_PID

pytestmark = pytest.mark.docker

#: `errno_of SYSCALL_NR ARGS...`: a raw syscall from Python; prints "ok" or the errno's name.
SYSCALL = """python3 -c '
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
args = [ctypes.create_string_buffer(256) if a == "buf" else int(a) for a in sys.argv[2:]]
result = libc.syscall(int(sys.argv[1]), *args)
print("ok" if result >= 0 else errno.errorcode[ctypes.get_errno()])' """


async def probe(ors: Ors, sid: str, command: str) -> str:
    result = await ors.bash(sid, command, timeout=20)
    return result.text


@pytest.fixture
async def sid(ors: Ors) -> str:
    session = await ors.new_session()
    await ors.prompt(session)
    return session


async def test_no_docker_socket_is_reachable(ors: Ors, sid: str) -> None:
    found = await probe(ors, sid, "for f in /var/run/docker.sock /run/docker.sock; do test -e $f || echo no $f; done; "
                                  "find / -xdev -type s 2>/dev/null | wc -l; env | grep -c DOCKER")
    assert found == "no /var/run/docker.sock\nno /run/docker.sock\n0\n0\n"


async def test_kernel_settings_are_read_only(ors: Ors, sid: str) -> None:
    writes = await probe(ors, sid, "for f in /proc/sys/kernel/core_pattern /proc/sys/vm/overcommit_memory "
                                   "/sys/kernel/uevent_helper; do (echo x > $f) 2>&1 | sed 's/.*: //'; done")
    refused = writes.splitlines()
    assert len(refused) == 3 and set(refused) <= {"Read-only file system", "Permission denied"}  # gVisor: the latter


async def test_mounting_fails(ors: Ors, sid: str) -> None:
    tries = await probe(ors, sid, "mkdir -p /workspace/m; "
                                  "mount -t tmpfs none /workspace/m 2>&1 | head -1 | sed 's/.*: //'; "
                                  "python3 -c 'import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True); "
                                  "libc.mount(b\"none\", b\"/workspace/m\", b\"tmpfs\", 0, None); "
                                  "print(errno.errorcode[ctypes.get_errno()])'")
    assert tries == "must be superuser to use mount.\nEPERM\n"


async def test_kernel_modules_cannot_be_loaded(ors: Ors, sid: str) -> None:
    # finit_module(fd of an empty file) and init_module(buffer): refused before the kernel looks at them
    tries = await probe(ors, sid, f"touch /tmp/m.ko; {SYSCALL} 313 3 0 0 3</tmp/m.ko; {SYSCALL} 175 buf 256 0")
    assert tries == "EPERM\nEPERM\n"


async def test_raw_and_packet_sockets_are_refused(ors: Ors, sid: str) -> None:
    tries = await probe(ors, sid, "python3 -c '\nimport socket\n"
                                  "for family, kind, proto in [(socket.AF_INET, socket.SOCK_RAW, 1), "
                                  "(socket.AF_PACKET, socket.SOCK_RAW, 0)]:\n"
                                  "    try: socket.socket(family, kind, proto); print(\"opened\")\n"
                                  "    except OSError as exc: print(exc.strerror)'")
    assert tries == "Operation not permitted\nOperation not permitted\n"


async def test_setuid_binaries_do_not_grant_root(ors: Ors, sid: str, runtime: str) -> None:
    # su is setuid root: caught waiting for its password, it still runs as uid 1000 (no-new-privileges)
    su = await probe(ors, sid, "test -u /usr/bin/su -a -O /usr/bin/su || echo setuid root; "
                               "(sleep 2 | su root -c id >/dev/null 2>&1 &); "
                               "sleep 0.5; grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/$(pgrep -n -x su)/status")
    assert su.splitlines()[:3] == ["setuid root", "Uid:\t1000\t1000\t1000\t1000", "CapEff:\t0000000000000000"]
    assert su.splitlines()[3:] == (["NoNewPrivs:\t1"] if runtime == "runc" else [])  # gVisor does not show it
    # a setuid copy is owned by its maker, in a nosuid mount
    copy = await probe(ors, sid, "cp /usr/bin/id /workspace/id && chmod u+s /workspace/id && /workspace/id -u; "
                                 "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1")
    assert copy == "1000\nPermissionError: [Errno 1] Operation not permitted\n"


async def test_new_namespaces_are_refused_or_give_nothing(ors: Ors, sid: str, runtime: str) -> None:
    tries = await probe(ors, sid, "for flags in -U -m -n -p -r; do unshare $flags true 2>&1 | sed 's/.*: //' | "
                                  "grep . || echo created $flags; done")
    if runtime == "runc":
        assert tries.splitlines() == ["Operation not permitted"] * 5
        return
    # gVisor's own kernel lets a user namespace be made inside it; it grants nothing outside.
    assert tries.splitlines() == ["created -U", *["Operation not permitted"] * 3, "created -r"]
    inside = await probe(ors, sid, "unshare -r sh -c 'id -u; echo x > /proc/sys/kernel/core_pattern' 2>&1 | "
                                   "sed 's/.*: //'")
    assert inside.splitlines()[0] == "0" and inside.splitlines()[1] in {"Permission denied", "Read-only file system"}


async def test_io_uring_is_blocked_while_ordinary_commands_work(ors: Ors, sid: str, engine: docker.DockerClient,
                                                                runtime: str) -> None:
    # io_uring_setup(8, params), io_uring_enter, io_uring_register
    tries = await probe(ors, sid, f"{SYSCALL} 425 8 buf; {SYSCALL} 426 0 0 0 0 0; {SYSCALL} 427 0 0 0 0; "
                                  "echo ordinary | tr a-z A-Z")
    if runtime == "runc":
        assert tries == "EPERM\nEPERM\nEPERM\nORDINARY\n"
    else:  # gVisor implements a little io_uring itself, in user space; the host's is never reached
        assert tries.endswith("ORDINARY\n")
    [container] = session_containers(engine, sid)
    [profile] = [opt[len("seccomp="):] for opt in container.attrs["HostConfig"]["SecurityOpt"]
                 if opt.startswith("seccomp=")]
    assert not [name for rule in json.loads(profile)["syscalls"] for name in rule["names"] if "io_uring" in name]


async def test_the_agent_cannot_be_traced_read_or_signalled(ors: Ors, sid: str, runtime: str) -> None:
    tries = await probe(ors, sid, f"pid={AGENT_PID}; echo agent=$pid; {SYSCALL} 101 16 $pid 0 0; "  # PTRACE_ATTACH
                                  "python3 -c \"open('/proc/$pid/mem', 'rb')\" 2>&1 | tail -1; "
                                  "echo \"$(cat /proc/$pid/environ 2>&1 | tr '\\0' ' ' | sed 's/.*: //')\"; "
                                  "kill -KILL $pid 2>&1 | sed 's/.*: //'; kill -KILL 1 2>&1 | sed 's/.*: //'; "
                                  "kill -KILL -1 2>/dev/null; echo after kill -1")
    agent, ptrace, mem, environ, kill_agent, kill_init, after = tries.splitlines()
    assert after == "after kill -1"
    assert int(agent.removeprefix("agent=")) > 1
    assert ptrace == "EPERM"
    assert mem.startswith("PermissionError: [Errno 13] Permission denied")
    if runtime == "runc":
        assert environ == "Permission denied"
    else:  # gVisor shows a non-dumpable process's environment; the agent's holds nothing secret
        assert "HOME=/root" in environ and "SECRET" not in environ.upper()
    assert kill_agent.endswith("Operation not permitted") and kill_init.endswith("Operation not permitted")
    assert (await ors.bash(sid, "echo the agent still answers")).text == "the agent still answers\n"


async def test_the_agent_folder_cannot_be_read_or_written(ors: Ors, sid: str) -> None:
    tries = await probe(ors, sid, "python3 -c '\nimport os\nfor d in (\"/run/orsbox\", \"/opt/env\"):\n"
                                  "    try: os.listdir(d)\n    except OSError as exc: print(d, exc.strerror)\n"
                                  "info = os.stat(\"/run/orsbox\"); print(info.st_uid, oct(info.st_mode & 0o777))'; "
                                  "touch /run/orsbox/x 2>&1 | sed 's/.*: //'")
    assert tries == "/run/orsbox Permission denied\n/opt/env Permission denied\n0 0o700\nPermission denied\n"
