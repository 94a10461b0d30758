"""One server per state dir and node id: `orsbox serve` refuses to start next to a holder, which a kill frees."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orsbox.errors import InstanceLocked
from orsbox.instance import RUN_LOCK_DIR, STATE_LOCK_NAME, InstanceLock, node_lock_name

from ..support.run import ROOT
from ..support.server import free_port

DEADLINE = 20.0  # s a refused `orsbox serve`, or a lock holder, may take to start (imports included)

HOLDER = """
import sys, time
from pathlib import Path
from orsbox.instance import InstanceLock
lock = InstanceLock.acquire(Path(sys.argv[1]), sys.argv[2])
time.sleep(60)
"""


@pytest.fixture
def node_id() -> Iterator[str]:
    """An id no one else's server uses; its host-wide lock files (and its variants') are removed afterwards."""
    node = f"test-lock-{uuid.uuid4().hex[:12]}"
    yield node
    for path in RUN_LOCK_DIR.glob(f"node-{node}*.lock"):
        path.unlink(missing_ok=True)


def child_env(**variables: str) -> dict[str, str]:
    """This checkout's orsbox, whichever one runs the tests."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **variables}


def serve(state_dir: Path, node_id: str) -> tuple[int, str, bool]:
    """Run `orsbox serve` until it exits: its status, its stderr, and whether its port ever answered."""
    port = free_port()
    command = [sys.executable, "-m", "orsbox.cli", "serve", "--state-dir", str(state_dir), "--port", str(port)]
    proc = subprocess.Popen(command, env=child_env(ORSBOX_NODE_ID=node_id), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listened = False
    deadline = time.monotonic() + DEADLINE
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as sock:
                listened |= sock.connect_ex(("127.0.0.1", port)) == 0
            time.sleep(0.01)
        assert proc.poll() is not None, "orsbox serve did not exit"
        _, stderr = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode, stderr, listened


def held_by(path: Path, pid: int) -> None:
    """Wait until `pid` has written itself into the lock file `path` (it holds the lock by then)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip() == str(pid):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} was not taken by pid {pid}")


def test_serve_refuses_a_state_dir_another_process_holds(tmp_path: Path, node_id: str) -> None:
    with InstanceLock.acquire(tmp_path, f"{node_id}-holder"):
        status, stderr, listened = serve(tmp_path, node_id)
    assert status == 1 and not listened
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"the state dir {tmp_path} is in use" in stderr and f"pid {os.getpid()}" in stderr
    assert "--state-dir" in stderr


def test_serve_refuses_a_node_id_another_process_holds(tmp_path: Path, node_id: str) -> None:
    with InstanceLock.acquire(tmp_path / "first", node_id) as lock:
        if RUN_LOCK_DIR / node_lock_name(node_id) not in lock.paths:
            pytest.skip(f"{RUN_LOCK_DIR} is not usable here: only state dirs are locked")
        status, stderr, listened = serve(tmp_path / "second", node_id)
    assert status == 1 and not listened
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"the node id {node_id!r} on this host is in use" in stderr and f"pid {os.getpid()}" in stderr
    assert "ORSBOX_NODE_ID" in stderr


def test_a_lock_is_refused_while_held_and_free_once_its_holder_is_killed(tmp_path: Path, node_id: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(first), node_id], env=child_env())
    try:
        held_by(first / STATE_LOCK_NAME, holder.pid)
        with pytest.raises(InstanceLocked) as refused:
            InstanceLock.acquire(first, f"{node_id}-other")
        assert refused.value.pid == holder.pid and refused.value.path == first / STATE_LOCK_NAME
        assert f"pid {holder.pid}" in refused.value.detail
        node_lock = RUN_LOCK_DIR / node_lock_name(node_id)
        if node_lock.exists():  # the host-wide folder is usable here
            with pytest.raises(InstanceLocked) as refused:
                InstanceLock.acquire(second, node_id)
            assert refused.value.pid == holder.pid and refused.value.path == node_lock
        InstanceLock.acquire(second, f"{node_id}-other").release()  # a refused attempt keeps no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with InstanceLock.acquire(first, node_id) as lock:  # the kernel let go with the process: nothing stale
        assert (first / STATE_LOCK_NAME).read_text() == f"{os.getpid()}\n"
        for path in lock.paths:
            assert path.read_text() == f"{os.getpid()}\n"


def test_release_lets_go_and_a_left_file_is_reused(tmp_path: Path, node_id: str) -> None:
    lock = InstanceLock.acquire(tmp_path, node_id)
    lock.release()
    lock.release()  # idempotent
    (tmp_path / STATE_LOCK_NAME).write_text("999999999\n")  # a file a crashed server left
    with InstanceLock.acquire(tmp_path, node_id):
        assert (tmp_path / STATE_LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_node_ids_become_safe_file_names() -> None:
    assert node_lock_name("worker-3.eu_1") == "node-worker-3.eu_1.lock"
    for unsafe in ("../../etc/passwd", "a/b", "", ".hidden", "x" * 65, "ünï", "a b"):
        name = node_lock_name(unsafe)
        assert name.startswith("node-sha256=") and "/" not in name and name.endswith(".lock"), name
    assert node_lock_name("a/b") != node_lock_name("a b")


def test_an_unusable_host_folder_leaves_the_state_dir_lock_and_says_so(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # anyone could plant files in it: not trusted
    for run_dir in (tmp_path / "missing" / "orsbox", shared):
        with capture_logs() as logs, InstanceLock.acquire(tmp_path / "state", "n1", run_dir=run_dir) as lock:
            assert lock.paths == [tmp_path / "state" / STATE_LOCK_NAME]
        assert [entry["event"] for entry in logs] == ["node_lock_unavailable"]
        assert logs[0]["log_level"] == "warning" and "only the state dir is locked" in logs[0]["hint"]
    assert not list(shared.iterdir())


def test_the_host_folder_is_made_0755(tmp_path: Path) -> None:
    run_dir = tmp_path / "orsbox"
    old = os.umask(0o077)
    try:
        with InstanceLock.acquire(tmp_path / "state", "n1", run_dir=run_dir) as lock:
            assert run_dir / "node-n1.lock" in lock.paths
    finally:
        os.umask(old)
    assert run_dir.stat().st_mode & 0o777 == 0o755
