"""Resource limits hold against hostile commands, are reported, and leave the session usable.

Everything goes through the ORS HTTP API, as a client would do it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import docker
import pytest

from ..support.managed import session_containers
from ..support.ors import Ors

pytestmark = pytest.mark.docker

MEMORY_BOMB = "python3 -c 'x = []\nwhile True: x.append(bytearray(64 * 2**20))'"


async def test_a_memory_bomb_is_killed_reported_and_the_session_goes_on(ors: Ors, runtime: str) -> None:
    sid = await ors.new_session()
    if runtime == "runsc":
        await _ends_only_its_own_session(ors, sid, MEMORY_BOMB)
        return
    alone = await ors.bash(sid, MEMORY_BOMB)  # the command, a child of the persistent shell, is killed: 128 + 9
    assert alone.output["metadata"] == {"exit_code": 137, "timed_out": False, "truncated": False, "oom_killed": True}
    child = await ors.bash(sid, f"{MEMORY_BOMB}; echo shell survived with $?")  # only a child is killed
    assert child.text.endswith("shell survived with 137\n")
    assert child.output["metadata"]["oom_killed"] is True and child.output["metadata"]["exit_code"] == 0
    after = await ors.bash(sid, "echo still here")
    assert after.text == "still here\n" and "oom_killed" not in after.output["metadata"]
    await ors.delete(sid)


FORK_BOMB = "python3 -c '\nimport os\nwhile True:\n    try: os.fork()\n    except OSError: pass'"


async def test_a_fork_bomb_hits_the_process_limit_and_the_next_call_works(ors: Ors, runtime: str) -> None:
    sid = await ors.new_session()
    if runtime == "runsc":
        await _ends_only_its_own_session(ors, sid, FORK_BOMB)
        return
    bomb = await ors.bash(sid, f"cat /sys/fs/cgroup/pids/pids.max; {FORK_BOMB}", timeout=5)
    assert bomb.text.startswith("256\n") and bomb.output["metadata"]["timed_out"] is True
    after = await ors.bash(sid, "echo recovered; ps -e --no-headers | wc -l")
    assert after.text.startswith("recovered\n") and int(after.text.split()[1]) < 10
    await ors.delete(sid)


async def _ends_only_its_own_session(ors: Ors, sid: str, bomb: str) -> None:
    """gVisor's kernel has no memory killer of its own: the host's cgroup limits take the whole sandbox."""
    neighbour = await ors.new_session()
    await ors.prompt(neighbour)
    answer = await ors.bash(sid, bomb, timeout=20)
    assert answer.events[-1] == ("error", "the sandbox's agent exited (its container died or was killed)")
    gone = await ors.http.get("/bash/prompt", headers={"X-Session-ID": sid})
    assert gone.status == 410
    assert (await ors.bash(neighbour, "echo unaffected")).text == "unaffected\n"
    await ors.delete(neighbour)


WRITABLE = {"/tmp": 256, "/workspace": 512, "/home/user": 64, "/dev/shm": 64}  # MiB, from the default policy


async def test_filling_every_writable_path_stops_at_its_size_and_the_session_goes_on(ors: Ors) -> None:
    sid = await ors.new_session()
    for path, mib in WRITABLE.items():
        fill = await ors.bash(sid, f"df -m --output=size {path} | tail -1; head -c 2G /dev/zero > {path}/fill; "
                                   f"echo exit=$?; du -m {path}/fill")
        size, error, status, used = fill.text.splitlines()
        assert int(size) == mib and "No space left on device" in error and status == "exit=1"
        assert mib - 2 <= int(used.split()[0]) <= mib
    after = await ors.bash(sid, "python3 -c 'bytearray(32 * 2**20); print(\"room to run\")'; "
                                "for f in /var/tmp/x /x /etc/x; do touch $f 2>&1 | sed 's/.*: //'; done")
    first, *refused = after.text.splitlines()
    assert first == "room to run" and len(refused) == 3
    assert set(refused) <= {"Read-only file system", "Permission denied"}  # gVisor says the latter for /var/tmp
    assert "oom_killed" not in after.output["metadata"]
    await ors.delete(sid)


async def test_a_cpu_hog_leaves_its_neighbours_and_the_server_responsive(ors: Ors, engine: docker.DockerClient) -> None:
    hog, neighbour = await ors.new_session(), await ors.new_session()
    await ors.prompt(hog), await ors.prompt(neighbour)
    [container] = session_containers(engine, hog)
    assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    spinning = asyncio.ensure_future(ors.bash(hog, "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
                                              timeout=6))
    await asyncio.sleep(1.5)
    started = time.monotonic()
    echo = await ors.bash(neighbour, "echo answered")
    echo_time = time.monotonic() - started
    started = time.monotonic()
    health = await ors.http.get("/health")
    health_time = time.monotonic() - started
    assert echo.text == "answered\n" and echo_time < 5
    assert health.status == 200 and health_time < 5
    assert (await spinning).output["metadata"]["timed_out"] is True
    assert (await ors.bash(hog, "echo cooled down")).text == "cooled down\n"
    await ors.delete(hog), await ors.delete(neighbour)


def _rss() -> int:
    """This process's resident memory (bytes): the app under test runs in it."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024


async def test_a_1gb_output_flood_is_truncated_without_growing_the_server(ors: Ors) -> None:
    sid = await ors.new_session()
    await ors.bash(sid, "echo warm-up")
    before, peak = _rss(), _rss()
    flood = asyncio.ensure_future(ors.bash(sid, "yes 0123456789abcdef0123456789abcdef | head -c 1000000000; echo END",
                                           timeout=400))  # gVisor pipes a GB in ~70 s alone, 2-3x that under load
    while not flood.done():
        peak = max(peak, _rss())
        await asyncio.sleep(0.05)
    result = await flood
    after = _rss()
    meta = result.output["metadata"]
    assert meta["truncated"] is True and meta["exit_code"] == 0 and meta["timed_out"] is False
    assert "bytes of output truncated" in result.text and result.text.endswith("END\n")
    assert len(result.text.encode()) <= 256 * 1024 + 100
    assert peak - before < 8 * 1024**2, f"RSS grew by {(peak - before) / 1024**2:.1f} MiB during the flood"
    assert after - before < 8 * 1024**2
    await ors.delete(sid)


async def test_a_command_ignoring_sigterm_is_killed_at_its_timeout(ors: Ors) -> None:
    sid = await ors.new_session()
    started = time.monotonic()
    stubborn = await ors.bash(sid, "python3 -c 'import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                   "print(\"started\", flush=True)\ntime.sleep(60)'", timeout=2)
    assert time.monotonic() - started < 15
    meta = stubborn.output["metadata"]
    assert meta["timed_out"] is True and meta["exit_code"] == -9 and stubborn.text == "started\n"
    left = await ors.bash(sid, "pgrep -u 1000 -f 'time[.]sleep' || echo none left")
    assert left.text == "none left\n"
    await ors.delete(sid)
