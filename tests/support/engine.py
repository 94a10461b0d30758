"""Stopping and starting the Docker engine for the engine-restart test, however it was started.

An init system that owns dockerd (systemd, or `service docker status` answering 0) stops and starts it;
otherwise the running dockerd is sent SIGTERM and started again with its own command line, detached.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker


def dockerd_pid() -> int | None:
    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True)
    return int(found.stdout.split()[0]) if found.returncode == 0 and found.stdout.split() else None


def why_not_restartable() -> str | None:
    """None where this test may restart the engine; otherwise the reason it is skipped."""
    if os.environ.get("ORSBOX_TEST_NO_ENGINE_RESTART") == "1":
        return "ORSBOX_TEST_NO_ENGINE_RESTART=1"
    if os.geteuid() != 0:
        return "restarting the Docker engine needs root"
    if dockerd_pid() is None:
        return "no local dockerd process (a remote or rootless engine)"
    return None


def _init_owns_dockerd() -> list[str] | None:
    if shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "docker"],
                                                    capture_output=True).returncode == 0:
        return ["systemctl"]
    if shutil.which("service") and subprocess.run(["service", "docker", "status"], capture_output=True).returncode == 0:
        return ["service"]
    return None


def stop_engine(timeout: float = 60) -> Callable[[], None]:
    """Stop the engine; returns the function that starts it again and waits until it answers."""
    manager = _init_owns_dockerd()
    pid = dockerd_pid()
    assert pid is not None
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    if manager == ["systemctl"]:
        subprocess.run(["systemctl", "stop", "docker"], check=True, timeout=timeout)
    elif manager == ["service"]:
        subprocess.run(["service", "docker", "stop"], check=True, timeout=timeout)
    else:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)

    def start() -> None:
        if manager == ["systemctl"]:
            subprocess.run(["systemctl", "start", "docker"], check=True, timeout=timeout)
        elif manager == ["service"]:
            subprocess.run(["service", "docker", "start"], check=True, timeout=timeout)
        else:
            log = open("/var/log/dockerd-orsbox-test.log", "ab")  # noqa: SIM115 - handed to the daemon
            subprocess.Popen([part.decode() for part in command], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                docker.from_env(timeout=5).ping()
                return
            except Exception:  # not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return start
